;; squatter: bids a little until it runs, grows its memory by 64 MiB and touches every page so
;; it is resident, then withdraws its bid and spins forever: it holds memory and does nothing.
(module
  (import "maxwell" "bid" (func $bid (param i64)))
  (import "maxwell" "cancel_bid" (func $cancel_bid))
  (import "maxwell" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "squatter: holding 64 MiB")
  (func (export "run")
    (local $i i32) (local $end i32)
    (call $bid (i64.const 1000))
    (if (i32.eq (memory.grow (i32.const 1024)) (i32.const -1)) (then (unreachable)))
    (local.set $i (i32.const 65536))
    (local.set $end (i32.mul (memory.size) (i32.const 65536)))
    (block $done
      (loop $touch
        (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
        (i32.store8 (local.get $i) (i32.const 1))
        (local.set $i (i32.add (local.get $i) (i32.const 4096)))
        (br $touch)))
    (call $log (i32.const 0) (i32.const 24))
    (call $cancel_bid)
    (loop $idle (br $idle))))
