//! The storage contract: one suite of checks that every engine must pass.
//!
//! Each check is an `async fn(&Store, prefix)` that works only inside `prefix` (a packed tuple),
//! so checks can share one FoundationDB cluster. The tests at the bottom run every check on a
//! fresh [`EmbeddedStore`] in a temporary directory and, with the `fdb` feature, on the cluster
//! named by `FDB_CLUSTER_FILE` (each test in its own random subspace, cleared afterwards); without
//! that variable the FoundationDB tests print `skipped: FDB_CLUSTER_FILE is not set` and pass.
//! Engine-specific properties (durability across a reopen, the embedded engine's bounded
//! conflict history) have their own tests after the shared ones.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::future::join_all;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::time::timeout;

use super::{
    embedded::{EmbeddedOptions, EmbeddedStore},
    prefix_range,
    tuple::{unpack, Element, Key},
    KeyValue, KvTxn, RangeRead, Store, StoreError, Versionstamp, MAX_KEY_BYTES, MAX_VALUE_BYTES,
};

/// How long a watch may take to fire once its key was written.
const WATCH_FIRES_WITHIN: Duration = Duration::from_secs(10);
/// How long a watch is given to (wrongly) fire before it is judged not to have.
const WATCH_QUIET_FOR: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------------
// Helpers

/// `prefix + (name,)`.
fn k(prefix: &[u8], name: &str) -> Vec<u8> {
    Key::from_prefix(prefix).str(name).finish()
}

/// `prefix + (name, i)`.
fn ki(prefix: &[u8], name: &str, i: i64) -> Vec<u8> {
    Key::from_prefix(prefix).str(name).int(i).finish()
}

/// Every key under `prefix + (name,)`.
fn under(prefix: &[u8], name: &str) -> RangeRead {
    RangeRead::prefix(&k(prefix, name))
}

async fn begin(store: &Store) -> Box<dyn KvTxn> {
    store.begin().await.expect("begin")
}

/// Reads `key` in a fresh transaction.
async fn read(store: &Store, key: &[u8]) -> Option<Vec<u8>> {
    let mut tx = begin(store).await;
    tx.get(key).await.expect("get")
}

/// Reads a range in a fresh transaction.
async fn scan(store: &Store, range: &RangeRead) -> Vec<KeyValue> {
    let mut tx = begin(store).await;
    tx.get_range(range).await.expect("get_range")
}

/// Writes `key = value` in its own transaction.
async fn write(store: &Store, key: &[u8], value: &[u8]) -> Versionstamp {
    let mut tx = begin(store).await;
    tx.set(key, value).expect("set");
    tx.commit().await.expect("commit").versionstamp
}

fn le(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// FoundationDB's `ADD` with an 8-byte operand, for the models below.
fn model_add(base: Option<&Vec<u8>>, delta: i64) -> Vec<u8> {
    let mut b = [0u8; 8];
    if let Some(v) = base {
        let n = v.len().min(8);
        b[..n].copy_from_slice(&v[..n]);
    }
    le(i64::from_le_bytes(b).wrapping_add(delta))
}

/// What a range read of `model` returns.
fn model_range(model: &BTreeMap<Vec<u8>, Vec<u8>>, r: &RangeRead) -> Vec<KeyValue> {
    let rows = model.range(r.begin.clone()..r.end.clone()).map(|(k, v)| (k.clone(), v.clone()));
    let rows: Vec<KeyValue> = if r.reverse { rows.rev().collect() } else { rows.collect() };
    if r.limit > 0 {
        rows.into_iter().take(r.limit).collect()
    } else {
        rows
    }
}

/// A mutation the engine must refuse: the error comes from the call, the commit, or both, and
/// is `expected` wherever it shows; nothing of the transaction is written.
async fn assert_refused(
    store: &Store,
    prefix: &[u8],
    what: &str,
    expected: fn(&StoreError) -> bool,
    mutate: impl FnOnce(&mut dyn KvTxn) -> Vec<super::Result<()>>,
) {
    let witness = k(prefix, &format!("witness of {what}"));
    let mut tx = begin(store).await;
    tx.set(&witness, b"must not land").expect("set witness");
    for r in mutate(&mut *tx) {
        if let Err(e) = r {
            assert!(expected(&e), "{what}: the call failed with the wrong error: {e:?}");
        }
    }
    match tx.commit().await {
        Err(e) => assert!(expected(&e), "{what}: the commit failed with the wrong error: {e:?}"),
        Ok(c) => panic!("{what}: the commit succeeded ({c:?})"),
    }
    assert_eq!(read(store, &witness).await, None, "{what}: part of the transaction landed");
}

// ---------------------------------------------------------------------------------------------
// The checks

/// Point reads and writes, in and across transactions.
pub(crate) async fn get_set_clear(store: &Store, prefix: &[u8]) {
    let (a, b) = (k(prefix, "a"), k(prefix, "b"));
    assert_eq!(read(store, &a).await, None);
    let mut tx = begin(store).await;
    tx.set(&a, b"1").unwrap();
    tx.set(&b, b"").unwrap();
    tx.commit().await.unwrap();
    assert_eq!(read(store, &a).await, Some(b"1".to_vec()));
    assert_eq!(read(store, &b).await, Some(Vec::new()), "an empty value is a value");

    write(store, &a, b"2").await;
    assert_eq!(read(store, &a).await, Some(b"2".to_vec()));

    let mut tx = begin(store).await;
    tx.clear(&a).unwrap();
    tx.clear(&k(prefix, "never written")).unwrap();
    tx.commit().await.unwrap();
    assert_eq!(read(store, &a).await, None);
    assert_eq!(read(store, &b).await, Some(Vec::new()));

    // A transaction sees the snapshot taken when it began, not later commits.
    let mut old = begin(store).await;
    write(store, &a, b"3").await;
    assert_eq!(old.get(&a).await.unwrap(), None, "a snapshot saw a later commit");
}

/// Range reads: bounds, limit, reverse, and merging with the transaction's own writes.
pub(crate) async fn range_reads(store: &Store, prefix: &[u8]) {
    let key = |i: i64| ki(prefix, "r", i);
    let mut tx = begin(store).await;
    for i in 0..10 {
        tx.set(&key(i), &[i as u8]).unwrap();
    }
    // Neighbours that a prefix read must not pick up.
    tx.set(&k(prefix, "q"), b"before").unwrap();
    tx.set(&k(prefix, "s"), b"after").unwrap();
    tx.commit().await.unwrap();

    let ids = |rows: &[KeyValue]| -> Vec<i64> { rows.iter().map(|(_, v)| i64::from(v[0])).collect() };
    let all = under(prefix, "r");
    assert_eq!(ids(&scan(store, &all).await), (0..10).collect::<Vec<_>>());
    assert_eq!(ids(&scan(store, &all.clone().limit(3)).await), vec![0, 1, 2]);
    assert_eq!(ids(&scan(store, &all.clone().reverse(true)).await), (0..10).rev().collect::<Vec<_>>());
    assert_eq!(ids(&scan(store, &all.clone().reverse(true).limit(3)).await), vec![9, 8, 7]);
    assert_eq!(ids(&scan(store, &all.clone().limit(100)).await).len(), 10);
    let rows = scan(store, &all).await;
    assert_eq!(rows[4].0, key(4), "range reads return keys");

    // Begin is inclusive, end exclusive, in both directions.
    let mid = RangeRead::between(key(2), key(5));
    assert_eq!(ids(&scan(store, &mid).await), vec![2, 3, 4]);
    assert_eq!(ids(&scan(store, &mid.clone().reverse(true)).await), vec![4, 3, 2]);
    assert_eq!(ids(&scan(store, &mid.clone().reverse(true).limit(2)).await), vec![4, 3]);
    assert!(scan(store, &RangeRead::between(key(2), key(2))).await.is_empty());
    let mut tx = begin(store).await;
    let inverted = tx.get_range(&RangeRead::between(key(5), key(2))).await;
    assert!(matches!(inverted, Err(StoreError::InvertedRange)), "{inverted:?}");

    // Own uncommitted writes merge into the snapshot, in order, in both directions.
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = scan(store, &all).await.into_iter().collect();
    let mut tx = begin(store).await;
    tx.set(&key(3), b"own 3").unwrap();
    model.insert(key(3), b"own 3".to_vec());
    tx.clear(&key(0)).unwrap();
    model.remove(&key(0));
    tx.set(&key(11), b"own 11").unwrap();
    model.insert(key(11), b"own 11".to_vec());
    tx.clear_range(&key(6), &key(8)).unwrap();
    model.remove(&key(6));
    model.remove(&key(7));
    tx.set(&key(7), b"own 7").unwrap();
    model.insert(key(7), b"own 7".to_vec());
    tx.atomic_add(&key(12), 5).unwrap();
    model.insert(key(12), le(5));
    tx.atomic_add(&key(1), 1).unwrap();
    let one = model.get(&key(1)).cloned();
    model.insert(key(1), model_add(one.as_ref(), 1));
    for limit in [0, 1, 3, 5, 100] {
        for reverse in [false, true] {
            let r = all.clone().limit(limit).reverse(reverse);
            let got = tx.get_range(&r).await.unwrap();
            assert_eq!(got, model_range(&model, &r), "limit {limit} reverse {reverse}");
        }
    }
    let r = RangeRead::between(key(3), key(8));
    assert_eq!(tx.get_range(&r).await.unwrap(), model_range(&model, &r));
    tx.commit().await.unwrap();
    assert_eq!(scan(store, &all).await, model_range(&model, &all));
}

/// `clear_range` removes exactly `[begin, end)`.
pub(crate) async fn clear_range(store: &Store, prefix: &[u8]) {
    let key = |i: i64| ki(prefix, "c", i);
    let mut tx = begin(store).await;
    for i in 0..10 {
        tx.set(&key(i), b"v").unwrap();
    }
    tx.set(&k(prefix, "d"), b"neighbour").unwrap();
    tx.commit().await.unwrap();

    let mut tx = begin(store).await;
    tx.clear_range(&key(3), &key(7)).unwrap();
    tx.clear_range(&key(9), &key(9)).unwrap(); // empty: clears nothing
    tx.commit().await.unwrap();
    let left: Vec<Vec<u8>> = scan(store, &under(prefix, "c")).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, [0, 1, 2, 7, 8, 9].map(key).to_vec());

    let mut tx = begin(store).await;
    let (b, e) = prefix_range(&k(prefix, "c"));
    tx.clear_range(&b, &e).unwrap();
    tx.commit().await.unwrap();
    assert!(scan(store, &under(prefix, "c")).await.is_empty());
    assert_eq!(read(store, &k(prefix, "d")).await, Some(b"neighbour".to_vec()));

    let mut tx = begin(store).await;
    let inverted = tx.clear_range(&key(7), &key(3));
    assert!(matches!(inverted, Err(StoreError::InvertedRange)), "{inverted:?}");
}

/// A transaction reads its own writes: sets, clears, cleared ranges, atomic adds. Its
/// versionstamped keys are not readable before commit.
pub(crate) async fn read_your_writes(store: &Store, prefix: &[u8]) {
    let (a, b, n) = (k(prefix, "a"), k(prefix, "b"), k(prefix, "n"));
    let c = |i: i64| ki(prefix, "c", i);
    let mut tx = begin(store).await;
    tx.set(&c(1), b"c1").unwrap();
    tx.set(&c(2), b"c2").unwrap();
    tx.commit().await.unwrap();

    let mut tx = begin(store).await;
    assert_eq!(tx.get(&a).await.unwrap(), None);
    tx.set(&a, b"1").unwrap();
    assert_eq!(tx.get(&a).await.unwrap(), Some(b"1".to_vec()));
    tx.clear(&a).unwrap();
    assert_eq!(tx.get(&a).await.unwrap(), None);
    tx.set(&b, b"b").unwrap();

    let (cb, ce) = prefix_range(&k(prefix, "c"));
    tx.clear_range(&cb, &ce).unwrap();
    assert_eq!(tx.get(&c(1)).await.unwrap(), None);
    assert!(tx.get_range(&under(prefix, "c")).await.unwrap().is_empty());
    tx.set(&c(2), b"new c2").unwrap();
    assert_eq!(tx.get(&c(2)).await.unwrap(), Some(b"new c2".to_vec()));
    assert_eq!(tx.get_range(&under(prefix, "c")).await.unwrap(), vec![(c(2), b"new c2".to_vec())]);

    tx.atomic_add(&n, 5).unwrap();
    assert_eq!(tx.get(&n).await.unwrap(), Some(le(5)));
    tx.atomic_add(&n, 2).unwrap();
    assert_eq!(tx.get(&n).await.unwrap(), Some(le(7)));
    tx.commit().await.unwrap();

    assert_eq!(read(store, &a).await, None);
    assert_eq!(read(store, &b).await, Some(b"b".to_vec()));
    assert_eq!(read(store, &c(1)).await, None);
    assert_eq!(read(store, &c(2)).await, Some(b"new c2".to_vec()));
    assert_eq!(read(store, &n).await, Some(le(7)));

    // Versionstamped keys are unknown until commit: a read of their range either leaves them
    // out (embedded) or is refused (FoundationDB's accessed_unreadable).
    let log = k(prefix, "vs");
    let mut tx = begin(store).await;
    let (key, offset) = Key::from_prefix(&log).incomplete_versionstamp().finish_versionstamped().unwrap();
    tx.set_versionstamped_key(&key, offset, b"v").unwrap();
    match tx.get_range(&RangeRead::prefix(&log)).await {
        Ok(rows) => assert!(rows.is_empty(), "a versionstamped key was visible before commit"),
        Err(e) => assert!(matches!(e, StoreError::Engine(_)), "{e:?}"),
    }
}

/// A randomized read-your-writes check against an in-memory model: random mutations, each
/// followed by random point and range reads, then the commit.
pub(crate) async fn read_your_writes_model(store: &Store, prefix: &[u8]) {
    let key = |i: i64| ki(prefix, "m", i);
    let all = under(prefix, "m");
    let mut rng = StdRng::seed_from_u64(0x5e1_7a9e);
    for round in 0..6 {
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = scan(store, &all).await.into_iter().collect();
        let mut tx = begin(store).await;
        for step in 0..40 {
            let i = rng.random_range(0..24);
            match rng.random_range(0..10) {
                0..=3 => {
                    let v = vec![rng.random::<u8>(); rng.random_range(0..12)];
                    tx.set(&key(i), &v).unwrap();
                    model.insert(key(i), v);
                }
                4 | 5 => {
                    tx.clear(&key(i)).unwrap();
                    model.remove(&key(i));
                }
                6 => {
                    let j = rng.random_range(i..=i + 6);
                    tx.clear_range(&key(i), &key(j)).unwrap();
                    let doomed: Vec<Vec<u8>> = model.range(key(i)..key(j)).map(|(k, _)| k.clone()).collect();
                    for d in doomed {
                        model.remove(&d);
                    }
                }
                _ => {
                    let delta = rng.random_range(-1000..1000);
                    tx.atomic_add(&key(i), delta).unwrap();
                    let sum = model_add(model.get(&key(i)), delta);
                    model.insert(key(i), sum);
                }
            }
            let p = rng.random_range(0..24);
            assert_eq!(
                tx.get(&key(p)).await.unwrap(),
                model.get(&key(p)).cloned(),
                "round {round} step {step}: get {p}"
            );
            // Several keys at once, one of them twice, answer as one by one.
            let many: Vec<Vec<u8>> = (0..5).map(|_| key(rng.random_range(0..24))).chain([key(p)]).collect();
            let got = tx.get_many(&many.iter().map(Vec::as_slice).collect::<Vec<_>>()).await.unwrap();
            let want: Vec<Option<Vec<u8>>> = many.iter().map(|k| model.get(k).cloned()).collect();
            assert_eq!(got, want, "round {round} step {step}: get_many");
            let (lo, hi) = (rng.random_range(0..24), rng.random_range(0..26));
            let r = RangeRead::between(key(lo.min(hi)), key(lo.max(hi)))
                .limit(rng.random_range(0..6))
                .reverse(rng.random_bool(0.5));
            let got = tx.get_range(&r).await.unwrap();
            assert_eq!(got, model_range(&model, &r), "round {round} step {step}: range {r:?}");
        }
        tx.commit().await.unwrap();
        assert_eq!(scan(store, &all).await, model_range(&model, &all), "round {round}: after commit");
    }
}

/// Keys read together conflict like keys read one by one: a write to any of them committed
/// after the read version fails the reader's commit; writes to other keys do not.
pub(crate) async fn get_many_conflicts(store: &Store, prefix: &[u8]) {
    let (a, b, c, d) = (k(prefix, "a"), k(prefix, "b"), k(prefix, "c"), k(prefix, "d"));
    write(store, &a, b"1").await;
    let mut reader = begin(store).await;
    assert_eq!(reader.get_many(&[&a, &b, &a]).await.unwrap(), vec![Some(b"1".to_vec()), None, Some(b"1".to_vec())]);
    assert_eq!(reader.get_many(&[]).await.unwrap(), Vec::<Option<Vec<u8>>>::new());
    write(store, &c, b"unrelated").await;
    let mut calm = begin(store).await;
    calm.get_many(&[&a, &d]).await.unwrap();
    calm.set(&d, b"x").unwrap();
    write(store, &b, b"2").await;
    reader.set(&c, b"3").unwrap();
    assert!(matches!(reader.commit().await, Err(StoreError::Conflict)), "a key read in get_many was written since");
    calm.commit().await.expect("nothing calm read was written since");
    assert_eq!(read(store, &d).await, Some(b"x".to_vec()));
    // A key too long is refused, as by `get`.
    let mut tx = begin(store).await;
    let long = vec![b'k'; MAX_KEY_BYTES + 1];
    assert!(matches!(tx.get_many(&[&a, &long]).await, Err(StoreError::KeyTooLarge(_))));
}

/// Atomic adds never conflict with each other and sum exactly.
pub(crate) async fn atomic_add(store: &Store, prefix: &[u8]) {
    let sum = k(prefix, "sum");
    let mut expected = 0i64;
    // Transactions begun together (same snapshot) and committed together.
    for round in 0..3i64 {
        let mut txns = Vec::new();
        for i in 0..20i64 {
            let mut tx = begin(store).await;
            let delta = (i - 7) * (round + 1) * 1_000_003;
            tx.atomic_add(&sum, delta).unwrap();
            expected += delta;
            txns.push(tx);
        }
        for r in join_all(txns.into_iter().map(|tx| tx.commit())).await {
            r.expect("concurrent atomic adds must not conflict");
        }
    }
    // Many tasks adding in a loop.
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (store, sum) = (store.clone(), sum.clone());
            tokio::spawn(async move {
                for i in 0..10 {
                    let mut tx = store.begin().await.unwrap();
                    tx.atomic_add(&sum, t * 100 + i).unwrap();
                    tx.commit().await.expect("atomic add must not conflict");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    expected += (0..8).flat_map(|t| (0..10).map(move |i| t * 100 + i)).sum::<i64>();
    assert_eq!(read(store, &sum).await, Some(le(expected)));

    // Shorter values are zero-extended; absent counts as zero; negative deltas subtract.
    let short = k(prefix, "short");
    write(store, &short, &[5]).await;
    let mut tx = begin(store).await;
    tx.atomic_add(&short, 3).unwrap();
    tx.atomic_add(&k(prefix, "absent"), -4).unwrap();
    tx.commit().await.unwrap();
    assert_eq!(read(store, &short).await, Some(le(8)));
    assert_eq!(read(store, &k(prefix, "absent")).await, Some(le(-4)));
}

/// Serializability: lost updates and write skew are refused, unrelated or blind writes are not,
/// range reads conflict on phantoms but only up to where a limit stopped them.
pub(crate) async fn serializable(store: &Store, prefix: &[u8]) {
    // Lost update: both read the counter, both write it, committed together.
    let counter = k(prefix, "counter");
    write(store, &counter, b"0").await;
    let mut t1 = begin(store).await;
    let mut t2 = begin(store).await;
    t1.get(&counter).await.unwrap();
    t2.get(&counter).await.unwrap();
    t1.set(&counter, b"1").unwrap();
    t2.set(&counter, b"2").unwrap();
    let (r1, r2) = futures::join!(t1.commit(), t2.commit());
    let outcomes = [&r1, &r2].map(|r| match r {
        Ok(_) => "ok",
        Err(StoreError::Conflict) => "conflict",
        Err(_) => "other",
    });
    assert!(outcomes == ["ok", "conflict"] || outcomes == ["conflict", "ok"], "lost update: {r1:?} {r2:?}");
    let winner: &[u8] = if r1.is_ok() { b"1" } else { b"2" };
    assert_eq!(read(store, &counter).await.as_deref(), Some(winner));

    // Write skew: each reads both, writes a different one; the later commit must fail.
    let (x, y) = (k(prefix, "x"), k(prefix, "y"));
    let mut tx = begin(store).await;
    tx.set(&x, b"on call").unwrap();
    tx.set(&y, b"on call").unwrap();
    tx.commit().await.unwrap();
    let mut t1 = begin(store).await;
    let mut t2 = begin(store).await;
    for t in [&mut t1, &mut t2] {
        t.get(&x).await.unwrap();
        t.get(&y).await.unwrap();
    }
    t1.clear(&x).unwrap();
    t2.clear(&y).unwrap();
    t1.commit().await.unwrap();
    let r = t2.commit().await;
    assert!(matches!(r, Err(StoreError::Conflict)), "write skew: {r:?}");
    assert_eq!(read(store, &y).await, Some(b"on call".to_vec()));

    // Disjoint read-write sets and blind writes commit side by side.
    let (p, q) = (k(prefix, "p"), k(prefix, "q"));
    let mut t1 = begin(store).await;
    let mut t2 = begin(store).await;
    t1.get(&p).await.unwrap();
    t1.set(&p, b"1").unwrap();
    t2.get(&q).await.unwrap();
    t2.set(&q, b"2").unwrap();
    t1.commit().await.expect("disjoint transactions must not conflict");
    t2.commit().await.expect("disjoint transactions must not conflict");
    let mut t1 = begin(store).await;
    let mut t2 = begin(store).await;
    t1.set(&p, b"blind 1").unwrap();
    t2.set(&p, b"blind 2").unwrap();
    t1.commit().await.expect("blind writes must not conflict");
    t2.commit().await.expect("blind writes must not conflict");
    assert_eq!(read(store, &p).await, Some(b"blind 2".to_vec()));

    // A read-only transaction never conflicts.
    let mut reader = begin(store).await;
    reader.get(&p).await.unwrap();
    write(store, &p, b"changed").await;
    assert_eq!(reader.commit().await.unwrap().versionstamp, Versionstamp::ZERO);

    // Phantoms: a range read conflicts with an insert into the range.
    let g = |i: i64| ki(prefix, "g", i);
    let mut t1 = begin(store).await;
    assert!(t1.get_range(&under(prefix, "g")).await.unwrap().is_empty());
    t1.set(&k(prefix, "g count"), b"0").unwrap();
    write(store, &g(1), b"phantom").await;
    let r = t1.commit().await;
    assert!(matches!(r, Err(StoreError::Conflict)), "phantom: {r:?}");

    // A limited read conflicts only up to the last key it returned.
    let mut tx = begin(store).await;
    for i in 0..10 {
        tx.set(&g(i), b"g").unwrap();
    }
    tx.commit().await.unwrap();
    let mut fwd = begin(store).await;
    let mut rev = begin(store).await;
    assert_eq!(fwd.get_range(&under(prefix, "g").limit(2)).await.unwrap().len(), 2); // 0, 1
    assert_eq!(rev.get_range(&under(prefix, "g").limit(2).reverse(true)).await.unwrap().len(), 2); // 9, 8
    fwd.set(&k(prefix, "fwd"), b"").unwrap();
    rev.set(&k(prefix, "rev"), b"").unwrap();
    write(store, &g(5), b"outside both").await;
    fwd.commit().await.expect("write past a limited read must not conflict");
    rev.commit().await.expect("write before a reverse limited read must not conflict");
    let mut fwd = begin(store).await;
    fwd.get_range(&under(prefix, "g").limit(2)).await.unwrap();
    fwd.set(&k(prefix, "fwd"), b"").unwrap();
    write(store, &g(1), b"inside").await;
    let r = fwd.commit().await;
    assert!(matches!(r, Err(StoreError::Conflict)), "write inside a limited read: {r:?}");
}

/// `transact!` retries read-modify-write increments until each lands exactly once.
pub(crate) async fn transact_retries(store: &Store, prefix: &[u8]) {
    const TASKS: u64 = 20;
    const EACH: u64 = 10;
    let counter = k(prefix, "counter");
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (store, counter) = (store.clone(), counter.clone());
            tokio::spawn(async move {
                for _ in 0..EACH {
                    crate::transact!(store, |tx| {
                        let n = match tx.get(&counter).await? {
                            Some(v) => u64::from_be_bytes(v.try_into().unwrap_or([0; 8])),
                            None => 0,
                        };
                        tx.set(&counter, &(n + 1).to_be_bytes())?;
                    })
                    .expect("transact");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let n = read(store, &counter).await.map(|v| u64::from_be_bytes(v.try_into().unwrap()));
    assert_eq!(n, Some(TASKS * EACH));

    // The macro hands back the body's value and the commit.
    let (value, committed) = crate::transact!(store, |tx| { tx.get(&counter).await?.map(|v| v.len()) }).unwrap();
    assert_eq!(value, Some(8));
    assert_eq!(committed.versionstamp, Versionstamp::ZERO, "read-only");
}

/// Versionstamps: unique and increasing, and substituted into versionstamped keys.
pub(crate) async fn versionstamps(store: &Store, prefix: &[u8]) {
    let log = k(prefix, "log");
    let mut stamps = Vec::new();
    for i in 0..5u8 {
        let mut tx = begin(store).await;
        for order in 0..2u16 {
            let (key, offset) =
                Key::from_prefix(&log).incomplete_versionstamp_with_order(order).finish_versionstamped().unwrap();
            tx.set_versionstamped_key(&key, offset, &[i, order as u8]).unwrap();
        }
        let c = tx.commit().await.unwrap();
        assert!(c.versionstamp > Versionstamp::ZERO);
        if let Some(last) = stamps.last() {
            assert!(c.versionstamp > *last, "versionstamps must increase");
        }
        stamps.push(c.versionstamp);
    }
    let rows = scan(store, &RangeRead::prefix(&log)).await;
    assert_eq!(rows.len(), 10);
    for (j, (key, value)) in rows.iter().enumerate() {
        let elements = unpack(&key[log.len()..]).unwrap();
        assert_eq!(elements.len(), 1, "{elements:?}");
        assert_eq!(elements[0].as_versionstamp(), Some(stamps[j / 2]), "row {j}");
        assert_eq!(elements[0].versionstamp_order(), Some((j % 2) as u16));
        assert_eq!(value, &[(j / 2) as u8, (j % 2) as u8]);
        let whole = unpack(key).unwrap();
        assert!(matches!(whole.last(), Some(Element::Versionstamp(_))));
    }

    // Concurrent commits get distinct versionstamps.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            let key = ki(prefix, "concurrent", i);
            tokio::spawn(async move {
                let mut tx = store.begin().await.unwrap();
                tx.set(&key, b"x").unwrap();
                tx.commit().await.unwrap().versionstamp
            })
        })
        .collect();
    let mut concurrent = Vec::new();
    for t in tasks {
        concurrent.push(t.await.unwrap());
    }
    concurrent.sort();
    concurrent.dedup();
    assert_eq!(concurrent.len(), 10, "duplicate versionstamps");
    assert!(concurrent[0] > *stamps.last().unwrap());

    // The placeholder must fit in the key.
    assert_refused(
        store,
        prefix,
        "bad versionstamp offset",
        |e| matches!(e, StoreError::BadVersionstampOffset { .. }),
        |tx| {
            let key = k(prefix, "short");
            vec![tx.set_versionstamped_key(&key, key.len() - 9, b"v")]
        },
    )
    .await;
}

/// A transaction that writes nothing commits with [`Versionstamp::ZERO`].
pub(crate) async fn read_only_commit(store: &Store, prefix: &[u8]) {
    let tx = begin(store).await;
    assert_eq!(tx.commit().await.unwrap().versionstamp, Versionstamp::ZERO);
    let mut tx = begin(store).await;
    tx.get(&k(prefix, "a")).await.unwrap();
    tx.get_range(&under(prefix, "b")).await.unwrap();
    assert_eq!(tx.commit().await.unwrap().versionstamp, Versionstamp::ZERO);
}

/// FoundationDB's size limits, enforced with the right error and nothing written.
pub(crate) async fn limits(store: &Store, prefix: &[u8]) {
    // A key of exactly the limit is fine; one byte more is not.
    let sized_key = |len: usize| Key::from_prefix(prefix).bytes(&vec![b'k'; len - prefix.len() - 2]).finish();
    let max_key = sized_key(MAX_KEY_BYTES);
    assert_eq!(max_key.len(), MAX_KEY_BYTES);
    write(store, &max_key, b"ok").await;
    assert_eq!(read(store, &max_key).await, Some(b"ok".to_vec()));
    let big_key = sized_key(MAX_KEY_BYTES + 1);
    assert_refused(
        store,
        prefix,
        "oversized key",
        |e| matches!(e, StoreError::KeyTooLarge(n) if *n > MAX_KEY_BYTES),
        |tx| vec![tx.set(&big_key, b"v")],
    )
    .await;
    assert_refused(
        store,
        prefix,
        "oversized clear",
        |e| matches!(e, StoreError::KeyTooLarge(_)),
        |tx| vec![tx.clear(&big_key)],
    )
    .await;
    assert_refused(
        store,
        prefix,
        "oversized add",
        |e| matches!(e, StoreError::KeyTooLarge(_)),
        |tx| vec![tx.atomic_add(&big_key, 1)],
    )
    .await;
    // Reading a key too long to exist: refused, or (FoundationDB's own answer) absent.
    let mut tx = begin(store).await;
    match tx.get(&big_key).await {
        Ok(v) => assert_eq!(v, None),
        Err(e) => assert!(matches!(e, StoreError::KeyTooLarge(_)), "{e:?}"),
    }

    // Values: the limit is fine, one byte more is not.
    let v = k(prefix, "value");
    write(store, &v, &vec![7u8; MAX_VALUE_BYTES]).await;
    assert_eq!(read(store, &v).await.map(|v| v.len()), Some(MAX_VALUE_BYTES));
    let big_value = vec![7u8; MAX_VALUE_BYTES + 1];
    assert_refused(
        store,
        prefix,
        "oversized value",
        |e| matches!(e, StoreError::ValueTooLarge(n) if *n == MAX_VALUE_BYTES + 1),
        |tx| vec![tx.set(&k(prefix, "big value"), &big_value)],
    )
    .await;
    assert_eq!(read(store, &k(prefix, "big value")).await, None);

    // A transaction of more than 10 MB.
    let chunk = vec![1u8; 99_000];
    assert_refused(
        store,
        prefix,
        "oversized transaction",
        |e| matches!(e, StoreError::TransactionTooLarge(_)),
        |tx| (0..105).map(|i| tx.set(&ki(prefix, "bulk", i), &chunk)).collect(),
    )
    .await;
    assert!(scan(store, &under(prefix, "bulk")).await.is_empty());
}

/// A transaction older than the engine's limit (`age`) fails, and writes nothing.
pub(crate) async fn too_old(store: &Store, prefix: &[u8], age: Duration) {
    let key = k(prefix, "old");
    let mut tx = begin(store).await;
    tx.get(&key).await.unwrap();
    tx.set(&key, b"late").unwrap();
    // The wait is the test: the transaction has to grow old.
    tokio::time::sleep(age + Duration::from_millis(500)).await;
    let late_read = tx.get(&k(prefix, "other")).await;
    assert!(matches!(late_read, Ok(_) | Err(StoreError::TooOld)), "{late_read:?}");
    let r = tx.commit().await;
    assert!(matches!(r, Err(StoreError::TooOld)), "{r:?}");
    assert!(StoreError::TooOld.is_retryable());
    assert_eq!(read(store, &key).await, None);
}

/// Watches fire on a later write of their key, and not before.
pub(crate) async fn watches(store: &Store, prefix: &[u8]) {
    let (key, other) = (k(prefix, "watched"), k(prefix, "other"));
    write(store, &key, b"0").await;

    let mut tx = begin(store).await;
    let mut w = tx.watch(&key).unwrap();
    tx.commit().await.unwrap();
    write(store, &other, b"x").await;
    assert!(timeout(WATCH_QUIET_FOR, &mut w).await.is_err(), "fired without a write to its key");
    write(store, &key, b"1").await;
    timeout(WATCH_FIRES_WITHIN, w).await.expect("did not fire").expect("failed");

    // Registered by a transaction whose snapshot predates a write: fires once committed.
    let mut tx = begin(store).await;
    let w = tx.watch(&key).unwrap();
    write(store, &key, b"2").await;
    tx.commit().await.unwrap();
    timeout(WATCH_FIRES_WITHIN, w).await.expect("did not fire").expect("failed");

    // The watching transaction's own write does not fire it; clearing a range around it does.
    let mut tx = begin(store).await;
    tx.set(&key, b"3").unwrap();
    let mut w = tx.watch(&key).unwrap();
    tx.commit().await.unwrap();
    assert!(timeout(WATCH_QUIET_FOR, &mut w).await.is_err(), "fired on its own write");
    let mut tx = begin(store).await;
    let (b, e) = prefix_range(prefix);
    tx.clear_range(&b, &e).unwrap();
    tx.commit().await.unwrap();
    timeout(WATCH_FIRES_WITHIN, w).await.expect("clear_range did not fire").expect("failed");

    // An atomic add fires it too.
    let mut tx = begin(store).await;
    let w = tx.watch(&key).unwrap();
    tx.commit().await.unwrap();
    let mut tx = begin(store).await;
    tx.atomic_add(&key, 1).unwrap();
    tx.commit().await.unwrap();
    timeout(WATCH_FIRES_WITHIN, w).await.expect("add did not fire").expect("failed");

    // A watch of a transaction that never commits fails instead of hanging.
    let mut tx = begin(store).await;
    let w = tx.watch(&key).unwrap();
    drop(tx);
    let r = timeout(WATCH_FIRES_WITHIN, w).await.expect("watch of a dropped transaction hung");
    assert!(r.is_err(), "watch of a dropped transaction resolved Ok");
}

// ---------------------------------------------------------------------------------------------
// Running the checks

/// The subspace the embedded runs use: any non-empty prefix exercises the prefix handling.
fn embedded_prefix() -> Vec<u8> {
    Key::new().str("contract").finish()
}

fn open_embedded(dir: &tempfile::TempDir, opts: EmbeddedOptions) -> Arc<EmbeddedStore> {
    EmbeddedStore::open(&dir.path().join("store.redb"), opts).expect("open embedded store")
}

#[cfg(feature = "fdb")]
mod fdb_run {
    use super::*;

    /// The cluster named by `FDB_CLUSTER_FILE` and a fresh random subspace on it, or `None`
    /// (after saying so) without one.
    pub(super) async fn env() -> Option<(Store, Vec<u8>)> {
        let Some(path) = std::env::var_os("FDB_CLUSTER_FILE") else {
            println!("skipped: FDB_CLUSTER_FILE is not set");
            return None;
        };
        let store: Store =
            crate::store::fdb::FdbStore::open(Some(std::path::Path::new(&path))).expect("open FoundationDB");
        let prefix = Key::new().str("selvage-contract-test").uint(rand::random()).finish();
        clear(&store, &prefix).await;
        Some((store, prefix))
    }

    /// Removes everything a check wrote.
    pub(super) async fn clear(store: &Store, prefix: &[u8]) {
        let (b, e) = prefix_range(prefix);
        crate::transact!(store, |tx| {
            tx.clear_range(&b, &e)?;
        })
        .expect("clear the test subspace");
    }
}

macro_rules! contract_tests {
    ($($check:ident),* $(,)?) => {
        /// Every check on a fresh embedded store.
        mod embedded_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let dir = tempfile::tempdir().unwrap();
                    let store: super::Store = super::open_embedded(&dir, Default::default());
                    super::$check(&store, &super::embedded_prefix()).await;
                }
            )*
        }

        /// Every check on the FoundationDB cluster of `FDB_CLUSTER_FILE`.
        #[cfg(feature = "fdb")]
        mod fdb_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some((store, prefix)) = super::fdb_run::env().await else { return };
                    super::$check(&store, &prefix).await;
                    super::fdb_run::clear(&store, &prefix).await;
                }
            )*
        }
    };
}

contract_tests!(
    get_set_clear,
    range_reads,
    clear_range,
    read_your_writes,
    read_your_writes_model,
    atomic_add,
    get_many_conflicts,
    serializable,
    transact_retries,
    versionstamps,
    read_only_commit,
    limits,
    watches,
);

#[cfg(feature = "fdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fdb_engine_too_old() {
    let Some((store, prefix)) = fdb_run::env().await else {
        return;
    };
    too_old(&store, &prefix, super::MAX_TXN_AGE).await;
    fdb_run::clear(&store, &prefix).await;
}

// ---------------------------------------------------------------------------------------------
// Embedded-only properties

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_too_old() {
    let dir = tempfile::tempdir().unwrap();
    let age = Duration::from_millis(300);
    let opts = EmbeddedOptions { max_txn_age: age, ..Default::default() };
    let store: Store = open_embedded(&dir, opts);
    too_old(&store, &embedded_prefix(), age).await;
}

/// A transaction whose read version predates the retained conflict history is too old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_too_old_past_retained_history() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = open_embedded(&dir, EmbeddedOptions { max_retained_writes: 4, ..Default::default() });
    let store: Store = embedded.clone();
    let p = embedded_prefix();
    let mut old = begin(&store).await;
    old.get(&k(&p, "a")).await.unwrap();
    old.set(&k(&p, "a"), b"old").unwrap();
    for i in 0..10 {
        write(&store, &ki(&p, "other", i), b"x").await;
    }
    let r = old.commit().await;
    assert!(matches!(r, Err(StoreError::TooOld)), "{r:?}");
    assert_eq!(embedded.stats().too_old, 1);
    // A fresh transaction is fine.
    write(&store, &k(&p, "a"), b"new").await;
}

/// Data, versions and versionstamps survive closing and reopening, with and without fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_durable_across_reopen() {
    let p = embedded_prefix();
    for fsync in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let opts = EmbeddedOptions { fsync, ..Default::default() };
        let embedded = open_embedded(&dir, opts.clone());
        assert_eq!(embedded.last_version(), 0);
        let store: Store = embedded.clone();
        let mut last = Versionstamp::ZERO;
        for i in 0..20 {
            let mut tx = begin(&store).await;
            tx.set(&ki(&p, "d", i), &[i as u8]).unwrap();
            tx.atomic_add(&k(&p, "n"), 1).unwrap();
            let (key, offset) =
                Key::from_prefix(&k(&p, "log")).incomplete_versionstamp().finish_versionstamped().unwrap();
            tx.set_versionstamped_key(&key, offset, b"e").unwrap();
            let c = tx.commit().await.unwrap();
            assert!(c.versionstamp > last);
            last = c.versionstamp;
        }
        let version = embedded.last_version();
        assert_eq!(version, last.version());
        drop(store);
        drop(embedded);

        let embedded = open_embedded(&dir, opts);
        assert_eq!(embedded.last_version(), version, "fsync={fsync}");
        let store: Store = embedded.clone();
        assert_eq!(scan(&store, &under(&p, "d")).await.len(), 20, "fsync={fsync}");
        assert_eq!(read(&store, &k(&p, "n")).await, Some(le(20)));
        let log = scan(&store, &under(&p, "log")).await;
        assert_eq!(log.len(), 20);
        let newest = unpack(&log[19].0).unwrap().last().and_then(Element::as_versionstamp);
        assert_eq!(newest, Some(last));
        let after = write(&store, &k(&p, "after"), b"reopen").await;
        assert!(after > last, "versionstamps must keep increasing across a reopen");
    }
}

/// Watches fail, rather than hang, once the store is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_watch_fails_when_store_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store: Store = open_embedded(&dir, Default::default());
    let mut tx = begin(&store).await;
    let w = tx.watch(&k(&embedded_prefix(), "w")).unwrap();
    tx.commit().await.unwrap();
    drop(store);
    let r = timeout(WATCH_FIRES_WITHIN, w).await.expect("watch hung after the store was dropped");
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
}

/// Concurrent commits share redb write transactions; conflicts are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_group_commit_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = open_embedded(&dir, Default::default());
    let store: Store = embedded.clone();
    let p = embedded_prefix();
    let mut txns = Vec::new();
    for i in 0..50 {
        let mut tx = begin(&store).await;
        tx.set(&ki(&p, "g", i), b"x").unwrap();
        txns.push(tx);
    }
    let mut stamps: Vec<Versionstamp> =
        join_all(txns.into_iter().map(|tx| tx.commit())).await.into_iter().map(|r| r.unwrap().versionstamp).collect();
    stamps.sort();
    stamps.dedup();
    assert_eq!(stamps.len(), 50);
    let stats = embedded.stats();
    assert_eq!(stats.commits, 50);
    assert!(stats.commit_groups < 50, "no group commit happened: {stats:?}");
    assert_eq!(embedded.last_version(), 50);

    let key = k(&p, "c");
    let mut t1 = begin(&store).await;
    let mut t2 = begin(&store).await;
    t1.get(&key).await.unwrap();
    t2.get(&key).await.unwrap();
    t1.set(&key, b"1").unwrap();
    t2.set(&key, b"2").unwrap();
    t1.commit().await.unwrap();
    assert!(matches!(t2.commit().await, Err(StoreError::Conflict)));
    assert_eq!(embedded.stats().conflicts, 1);
}
