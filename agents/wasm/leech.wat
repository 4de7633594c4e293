;; leech: hashes and churns memory (overwriting a 4 MiB buffer again and again, which erases
;; it), claims nothing, and bids nine tenths of its balance.
(module
  (import "maxwell" "bid" (func $bid (param i64)))
  (import "maxwell" "balance" (func $balance (result i64)))
  (import "maxwell" "log" (func $log (param i32 i32)))
  (memory (export "memory") 65)
  (data (i32.const 0) "leech: hashing")
  (func (export "run")
    (local $round i64) (local $i i32) (local $h i64)
    (call $log (i32.const 0) (i32.const 14))
    (loop $forever
      (call $bid (i64.div_u (i64.mul (call $balance) (i64.const 9)) (i64.const 10)))
      (local.set $round (i64.add (local.get $round) (i64.const 1)))
      ;; Overwrite bytes 65536 .. 65536 + 4 MiB, two 8-byte words per iteration.
      (local.set $i (i32.const 65536))
      (block $done
        (loop $churn
          (br_if $done (i32.ge_u (local.get $i) (i32.const 4259840)))
          (local.set $h (i64.mul (i64.xor (local.get $h) (i64.add (local.get $round) (i64.extend_i32_u (local.get $i))))
                                 (i64.const 0x9E3779B97F4A7C15)))
          (i64.store (local.get $i) (local.get $h))
          (i64.store (i32.add (local.get $i) (i32.const 8)) (i64.rotl (local.get $h) (i64.const 17)))
          (local.set $i (i32.add (local.get $i) (i32.const 16)))
          (br $churn)))
      (br $forever))))
