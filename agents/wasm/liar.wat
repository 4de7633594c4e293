;; liar: claims prime counts for ranges it never sieved (a plausible count, a made-up digest),
;; one claim per short busy wait, and bids a tenth of its balance.
(module
  (import "maxwell" "bid" (func $bid (param i64)))
  (import "maxwell" "claim" (func $claim (param i64 i64 i64 i64)))
  (import "maxwell" "balance" (func $balance (result i64)))
  (import "maxwell" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "liar: claiming without working")
  (func (export "run")
    (local $k i64) (local $spin i32)
    (call $log (i32.const 0) (i32.const 30))
    (local.set $k (i64.const 2000000000))
    (loop $forever
      (call $bid (i64.div_u (call $balance) (i64.const 10)))
      ;; About 3,200 primes lie in 65,536 numbers near 2e9; claim that, with a digest from nothing.
      (call $claim (local.get $k) (i64.add (local.get $k) (i64.const 65536)) (i64.const 3200)
                   (i64.mul (local.get $k) (i64.const 0x2545F4914F6CDD1D)))
      (local.set $k (i64.add (local.get $k) (i64.const 65536)))
      (local.set $spin (i32.const 2000000))
      (loop $wait
        (local.set $spin (i32.sub (local.get $spin) (i32.const 1)))
        (br_if $wait (local.get $spin)))
      (br $forever))))
