;; scientist: counts primes, range after range, with a segmented sieve, and claims each range
;; with its count and digest (maxwell_core::work::sieve computes the same, so audits recheck it).
;; Bids a twentieth of its balance each range. Hot loops are unrolled so the epoch check on each
;; loop back-edge is amortised.
(module
  (import "maxwell" "bid" (func $bid (param i64)))
  (import "maxwell" "claim" (func $claim (param i64 i64 i64 i64)))
  (import "maxwell" "balance" (func $balance (result i64)))
  (import "maxwell" "log" (func $log (param i32 i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) "scientist: sieving from 1e9")
  ;; Numbers per range; the segment's flags live at byte 4096.
  (global $W i64 (i64.const 65536))
  (global $START i64 (i64.const 1000000000))

  ;; maxwell_core::work's mix: a splitmix64 finaliser over the running state and the prime.
  (func $mix (param $h i64) (param $p i64) (result i64)
    (local.set $h (i64.xor (local.get $h) (i64.add (local.get $p) (i64.const 0x9E3779B97F4A7C15))))
    (local.set $h (i64.mul (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 30)))
                           (i64.const 0xBF58476D1CE4E5B9)))
    (local.set $h (i64.mul (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 27)))
                           (i64.const 0x94D049BB133111EB)))
    (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 31))))

  ;; Counts and digests the primes in [s, e) and claims them.
  (func $sieve (param $s i64) (param $e i64)
    (local $lo i64) (local $p i64) (local $m i64) (local $i i64) (local $count i64) (local $h i64)
    (local.set $lo (select (local.get $s) (i64.const 2) (i64.gt_u (local.get $s) (i64.const 2))))
    (if (i64.le_u (local.get $e) (local.get $lo))
      (then (call $claim (local.get $s) (local.get $e) (i64.const 0) (i64.const 0)) (return)))
    (memory.fill (i32.const 4096) (i32.const 0)
                 (i32.wrap_i64 (i64.sub (local.get $e) (local.get $lo))))
    ;; Cross off multiples of every p with p * p < e (2, then odd p; composite p add nothing).
    (local.set $p (i64.const 2))
    (block $sieved
      (loop $next_p
        (br_if $sieved (i64.ge_u (i64.mul (local.get $p) (local.get $p)) (local.get $e)))
        (local.set $m (i64.mul (i64.div_u (i64.add (local.get $lo) (i64.sub (local.get $p) (i64.const 1)))
                                          (local.get $p))
                               (local.get $p)))
        (if (i64.lt_u (local.get $m) (i64.mul (local.get $p) (local.get $p)))
          (then (local.set $m (i64.mul (local.get $p) (local.get $p)))))
        (local.set $m (i64.sub (local.get $m) (local.get $lo)))
        ;; Four marks per iteration while they all fit.
        (block $fours_done
          (loop $fours
            (br_if $fours_done
              (i64.ge_u (i64.add (local.get $m) (i64.mul (local.get $p) (i64.const 3)))
                        (i64.sub (local.get $e) (local.get $lo))))
            (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
            (i32.store8 offset=4096 (i32.wrap_i64 (i64.add (local.get $m) (local.get $p))) (i32.const 1))
            (i32.store8 offset=4096 (i32.wrap_i64 (i64.add (local.get $m) (i64.shl (local.get $p) (i64.const 1)))) (i32.const 1))
            (i32.store8 offset=4096 (i32.wrap_i64 (i64.add (local.get $m) (i64.mul (local.get $p) (i64.const 3)))) (i32.const 1))
            (local.set $m (i64.add (local.get $m) (i64.shl (local.get $p) (i64.const 2))))
            (br $fours)))
        (block $ones_done
          (loop $ones
            (br_if $ones_done (i64.ge_u (local.get $m) (i64.sub (local.get $e) (local.get $lo))))
            (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
            (local.set $m (i64.add (local.get $m) (local.get $p)))
            (br $ones)))
        (local.set $p (i64.add (local.get $p)
                               (select (i64.const 1) (i64.const 2) (i64.eq (local.get $p) (i64.const 2)))))
        (br $next_p)))
    ;; Count and digest, in order.
    (local.set $i (local.get $lo))
    (block $counted
      (loop $each
        (br_if $counted (i64.ge_u (local.get $i) (local.get $e)))
        (if (i32.eqz (i32.load8_u (i32.add (i32.const 4096)
                                            (i32.wrap_i64 (i64.sub (local.get $i) (local.get $lo))))))
          (then
            (local.set $count (i64.add (local.get $count) (i64.const 1)))
            (local.set $h (call $mix (local.get $h) (local.get $i)))))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $each)))
    (call $claim (local.get $s) (local.get $e) (local.get $count) (local.get $h)))

  (func (export "run")
    (local $k i64)
    (call $log (i32.const 0) (i32.const 27))
    (local.set $k (global.get $START))
    (loop $forever
      (call $bid (i64.div_u (call $balance) (i64.const 20)))
      (call $sieve (local.get $k) (i64.add (local.get $k) (global.get $W)))
      (local.set $k (i64.add (local.get $k) (global.get $W)))
      (br $forever))))
