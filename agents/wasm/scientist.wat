;; scientist: counts primes in the ranges its host leases to it (`work`), with a segmented sieve,
;; and claims each range with its count and digest (maxwell_core::work::sieve computes the same,
;; so audits recheck it). Bids its value: net income per quantum it ran (`income`, `quanta`)
;; over its last 128 to 256 quanta, once it has 24 (the owner's opening bid, on trial, stands
;; until then). Memory: bytes 4096.. hold
;; the flags (1 MiB for the base sieve, then each segment), bytes 1052672.. the base primes below
;; 2^20 (enough for every number below 2^40). Hot loops do several steps per iteration so that
;; the interruption check on each loop back-edge is amortised.
(module
  (import "maxwell" "bid" (func $bid (param i64)))
  (import "maxwell" "claim" (func $claim (param i64 i64 i64 i64)))
  (import "maxwell" "income" (func $income (result i64)))
  (import "maxwell" "quanta" (func $quanta (result i64)))
  (import "maxwell" "work" (func $work (result i64)))
  (import "maxwell" "log" (func $log (param i32 i32)))
  (memory (export "memory") 22)
  (data (i32.const 0) "scientist: sieving leased ranges")
  ;; Numbers per range; the segment's flags live at byte 4096.
  (global $W i64 (i64.const 262144))
  ;; How many base primes the table at byte 1052672 holds.
  (global $nbase (mut i32) (i32.const 0))
  ;; Ranges to sieve before returning: all of them (2^64 - 1) unless a benchmark sets fewer.
  (global $RANGES i64 (i64.const -1)) ;; RANGES

  ;; The primes below 2^20 into the table at byte 1052672 (a plain sieve in the flag area; only
  ;; primes below 2^10 have multiples left to cross off, and i * i stays in range).
  (func $base_primes (local $i i32) (local $j i32)
    (memory.fill (i32.const 4096) (i32.const 0) (i32.const 1048576))
    (local.set $i (i32.const 2))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (i32.const 1048576)))
        (if (i32.eqz (i32.load8_u offset=4096 (local.get $i)))
          (then
            (i32.store offset=1052672 (i32.shl (global.get $nbase) (i32.const 2)) (local.get $i))
            (global.set $nbase (i32.add (global.get $nbase) (i32.const 1)))
            (if (i32.lt_u (local.get $i) (i32.const 1024))
              (then
                (local.set $j (i32.mul (local.get $i) (local.get $i)))
                (block $marked
                  (loop $mark
                    (br_if $marked (i32.ge_u (local.get $j) (i32.const 1048576)))
                    (i32.store8 offset=4096 (local.get $j) (i32.const 1))
                    (local.set $j (i32.add (local.get $j) (local.get $i)))
                    (br $mark)))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each))))

  ;; Counts and digests the primes in [s, e) and claims them.
  (func $sieve (param $s i64) (param $e i64)
    (local $lo i64) (local $p i64) (local $m i64) (local $len i64) (local $count i64) (local $h i64)
    (local $idx i32) (local $j i32) (local $n i32) (local $x i64)
    (local.set $lo (select (local.get $s) (i64.const 2) (i64.gt_u (local.get $s) (i64.const 2))))
    (if (i64.le_u (local.get $e) (local.get $lo))
      (then (call $claim (local.get $s) (local.get $e) (i64.const 0) (i64.const 0)) (return)))
    (local.set $len (i64.sub (local.get $e) (local.get $lo)))
    (memory.fill (i32.const 4096) (i32.const 0) (i32.wrap_i64 (local.get $len)))
    ;; Cross off multiples of every base prime p with p * p < e; past the table's end (e above
    ;; 2^40), every odd p (composite p mark nothing new).
    (block $sieved
      (loop $next_p
        (if (i32.lt_u (local.get $idx) (global.get $nbase))
          (then (local.set $p (i64.extend_i32_u
                  (i32.load offset=1052672 (i32.shl (local.get $idx) (i32.const 2))))))
          (else (local.set $p (i64.add (local.get $p) (i64.const 2)))))
        (local.set $idx (i32.add (local.get $idx) (i32.const 1)))
        (br_if $sieved (i64.ge_u (i64.mul (local.get $p) (local.get $p)) (local.get $e)))
        (local.set $m (i64.mul (i64.div_u (i64.add (local.get $lo) (i64.sub (local.get $p) (i64.const 1)))
                                          (local.get $p))
                               (local.get $p)))
        (if (i64.lt_u (local.get $m) (i64.mul (local.get $p) (local.get $p)))
          (then (local.set $m (i64.mul (local.get $p) (local.get $p)))))
        (local.set $m (i64.sub (local.get $m) (local.get $lo)))
        ;; Sixteen marks per iteration while they all fit, so the loop's interruption check is
        ;; amortised; then one at a time.
        (block $eights_done
          (loop $eights
            (br_if $eights_done
              (i64.ge_u (i64.add (local.get $m) (i64.mul (local.get $p) (i64.const 15))) (local.get $len)))
            (local.set $j (i32.wrap_i64 (local.get $m)))
            (local.set $n (i32.wrap_i64 (local.get $p)))
            (i32.store8 offset=4096 (local.get $j) (i32.const 1))
            (i32.store8 offset=4096 (local.tee $j (i32.add (local.get $j) (local.get $n))) (i32.const 1))
            (i32.store8 offset=4096 (local.tee $j (i32.add (local.get $j) (local.get $n))) (i32.const 1))
            (i32.store8 offset=4096 (local.tee $j (i32.add (local.get $j) (local.get $n))) (i32.const 1))
            (i32.store8 offset=4096 (local.tee $j (i32.add (local.get $j) (local.get $n))) (i32.const 1))
            (i32.store8 offset=4096 (local.tee $j (i32.add (local.get $j) (local.get $n))) (i32.const 1))
            (i32.store8 offset=4096 (local.tee $j (i32.add (local.get $j) (local.get $n))) (i32.const 1))
            (i32.store8 offset=4096 (local.tee $j (i32.add (local.get $j) (local.get $n))) (i32.const 1))
            (i32.store8 offset=4096 (local.tee $j (i32.add (local.get $j) (local.get $n))) (i32.const 1))
            (i32.store8 offset=4096 (local.tee $j (i32.add (local.get $j) (local.get $n))) (i32.const 1))
            (i32.store8 offset=4096 (local.tee $j (i32.add (local.get $j) (local.get $n))) (i32.const 1))
            (i32.store8 offset=4096 (local.tee $j (i32.add (local.get $j) (local.get $n))) (i32.const 1))
            (i32.store8 offset=4096 (local.tee $j (i32.add (local.get $j) (local.get $n))) (i32.const 1))
            (i32.store8 offset=4096 (local.tee $j (i32.add (local.get $j) (local.get $n))) (i32.const 1))
            (i32.store8 offset=4096 (local.tee $j (i32.add (local.get $j) (local.get $n))) (i32.const 1))
            (i32.store8 offset=4096 (local.tee $j (i32.add (local.get $j) (local.get $n))) (i32.const 1))
            (local.set $m (i64.add (local.get $m) (i64.shl (local.get $p) (i64.const 4))))
            (br $eights)))
        ;; At most fifteen marks remain: guarded straight-line stores, no loop.
        (if (i64.lt_u (local.get $m) (local.get $len))
          (then
            (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
            (local.set $m (i64.add (local.get $m) (local.get $p)))
          (if (i64.lt_u (local.get $m) (local.get $len))
            (then
              (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
              (local.set $m (i64.add (local.get $m) (local.get $p)))
            (if (i64.lt_u (local.get $m) (local.get $len))
              (then
                (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
                (local.set $m (i64.add (local.get $m) (local.get $p)))
              (if (i64.lt_u (local.get $m) (local.get $len))
                (then
                  (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
                  (local.set $m (i64.add (local.get $m) (local.get $p)))
                (if (i64.lt_u (local.get $m) (local.get $len))
                  (then
                    (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
                    (local.set $m (i64.add (local.get $m) (local.get $p)))
                  (if (i64.lt_u (local.get $m) (local.get $len))
                    (then
                      (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
                      (local.set $m (i64.add (local.get $m) (local.get $p)))
                    (if (i64.lt_u (local.get $m) (local.get $len))
                      (then
                        (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
                        (local.set $m (i64.add (local.get $m) (local.get $p)))
                      (if (i64.lt_u (local.get $m) (local.get $len))
                        (then
                          (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
                          (local.set $m (i64.add (local.get $m) (local.get $p)))
                        (if (i64.lt_u (local.get $m) (local.get $len))
                          (then
                            (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
                            (local.set $m (i64.add (local.get $m) (local.get $p)))
                          (if (i64.lt_u (local.get $m) (local.get $len))
                            (then
                              (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
                              (local.set $m (i64.add (local.get $m) (local.get $p)))
                            (if (i64.lt_u (local.get $m) (local.get $len))
                              (then
                                (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
                                (local.set $m (i64.add (local.get $m) (local.get $p)))
                              (if (i64.lt_u (local.get $m) (local.get $len))
                                (then
                                  (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
                                  (local.set $m (i64.add (local.get $m) (local.get $p)))
                                (if (i64.lt_u (local.get $m) (local.get $len))
                                  (then
                                    (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
                                    (local.set $m (i64.add (local.get $m) (local.get $p)))
                                  (if (i64.lt_u (local.get $m) (local.get $len))
                                    (then
                                      (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
                                      (local.set $m (i64.add (local.get $m) (local.get $p)))
                                    (if (i64.lt_u (local.get $m) (local.get $len))
                                      (then
                                        (i32.store8 offset=4096 (i32.wrap_i64 (local.get $m)) (i32.const 1))
                                        (local.set $m (i64.add (local.get $m) (local.get $p)))))))))))))))))))))))))))))))))
        (br $next_p)))
    ;; Count and digest, in order. Flags are 1 for composites: eight at a time, a group of eight
    ;; composites is skipped in one step and otherwise the first prime in it is found by ctz.
    (local.set $n (i32.wrap_i64 (local.get $len)))
    (local.set $j (i32.const 0))
    (block $counted
      (loop $each
        (br_if $counted (i32.ge_u (local.get $j) (local.get $n)))
        (if (i32.le_u (i32.add (local.get $j) (i32.const 8)) (local.get $n))
          (then
            (local.set $x (i64.xor (i64.load offset=4096 (local.get $j)) (i64.const 0x0101010101010101)))
            (if (i64.eqz (local.get $x))
              (then (local.set $j (i32.add (local.get $j) (i32.const 8))) (br $each)))
            (local.set $j (i32.add (local.get $j)
                                   (i32.wrap_i64 (i64.shr_u (i64.ctz (local.get $x)) (i64.const 3)))))))
        (if (i32.eqz (i32.load8_u offset=4096 (local.get $j)))
          (then
            (local.set $count (i64.add (local.get $count) (i64.const 1)))
            ;; $h = mix($h, lo + j), inlined: a call would add its own interruption check.
            (local.set $h (i64.xor (local.get $h)
                                   (i64.add (i64.add (local.get $lo) (i64.extend_i32_u (local.get $j)))
                                            (i64.const 0x9E3779B97F4A7C15))))
            (local.set $h (i64.mul (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 30)))
                                   (i64.const 0xBF58476D1CE4E5B9)))
            (local.set $h (i64.mul (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 27)))
                                   (i64.const 0x94D049BB133111EB)))
            (local.set $h (i64.xor (local.get $h) (i64.shr_u (local.get $h) (i64.const 31))))))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $each)))
    (call $claim (local.get $s) (local.get $e) (local.get $count) (local.get $h)))

  ;; The value meter: two snapshots of (income, quanta run), the older at least 128 quanta
  ;; before the newer, so the value is measured over the last 128 to 256 quanta run. The window
  ;; opens at the first income the host reports (start-up, the base sieve and the Landauer tax
  ;; it cost, however many quanta a busy machine stretched them over, are never inside it).
  (global $i0 (mut i64) (i64.const 0)) (global $q0 (mut i64) (i64.const -1))
  (global $i1 (mut i64) (i64.const 0)) (global $q1 (mut i64) (i64.const 0))

  ;; Net income per quantum run over the window, or -1 while the window is shorter than 24.
  (func $value (result i64) (local $i i64) (local $q i64)
    (local.set $i (call $income))
    (local.set $q (call $quanta))
    (if (i64.lt_s (global.get $q0) (i64.const 0))
      (then
        (if (i32.and (i64.ge_u (local.get $q) (i64.const 1)) (i64.gt_u (local.get $i) (i64.const 0)))
          (then (global.set $i0 (local.get $i)) (global.set $q0 (local.get $q))
                (global.set $i1 (local.get $i)) (global.set $q1 (local.get $q))))
        (return (i64.const -1))))
    (if (i64.ge_u (i64.sub (local.get $q) (global.get $q1)) (i64.const 128))
      (then (global.set $i0 (global.get $i1)) (global.set $q0 (global.get $q1))
            (global.set $i1 (local.get $i)) (global.set $q1 (local.get $q))))
    (if (i64.lt_u (i64.sub (local.get $q) (global.get $q0)) (i64.const 24))
      (then (return (i64.const -1))))
    (i64.div_u (i64.sub (local.get $i) (global.get $i0)) (i64.sub (local.get $q) (global.get $q0))))

  (func (export "run")
    (local $k i64) (local $n i64) (local $v i64)
    (call $log (i32.const 0) (i32.const 32))
    (call $base_primes)
    (loop $forever
      ;; The next leased range; -1 means none is queued yet (the host waited a millisecond).
      (local.set $k (call $work))
      (if (i64.ge_s (local.get $k) (i64.const 0))
        (then
          (call $sieve (local.get $k) (i64.add (local.get $k) (global.get $W)))
          (local.set $n (i64.add (local.get $n) (i64.const 1)))
          ;; Bid the value of a slot: net income per quantum run over the meter's window
          ;; (the host caps it by the balance). The owner's opening bid stands until then.
          (local.set $v (call $value))
          (if (i64.ge_s (local.get $v) (i64.const 0))
            (then (call $bid (local.get $v))))))
      (br_if $forever (i64.lt_u (local.get $n) (global.get $RANGES))))))
