//! Self-test of the parsers (`--self-test`): no server needed, so CI can run it.

use super::*;

pub(crate) fn ensure(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("self-test failed: {what}"))
    }
}

/// Feeds `pieces` to one connection's parser as if they were successive reads.
pub(crate) fn feed(sh: &Shared, chunked: bool, pieces: &[&[u8]], topics: u64) -> Result<(), String> {
    feed_as(sh, chunked, pieces, topics, false)
}

pub(crate) fn feed_as(
    sh: &Shared,
    chunked: bool,
    pieces: &[&[u8]],
    topics: u64,
    nchan_ids: bool,
) -> Result<(), String> {
    let ctx = Ctx { sh, topics, per_conn: 1, first: 0, url: 0, nchan_ids };
    let chunk = if chunked { Chunk::Size } else { Chunk::Identity };
    let mut c = SseConn { f: Framing { buf: Vec::new(), dec: 0, chunk }, st: SseState::default() };
    for p in pieces {
        c.f.buf.extend_from_slice(p);
        c.process(&ctx, false)?;
    }
    Ok(())
}

pub(crate) fn self_test() -> Result<(), String> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len()).into_bytes();
    let now = unix_nanos();
    let mut body = Vec::new();
    body.extend(chunk("retry: 3000\n: hi\n\n"));
    body.extend(chunk(&format!("id: 1-0\ndata: 0 {now} xxx\n\n")));
    body.extend(chunk(&format!("id: 1-1\r\ndata: 2 {now} xx\r\n\r\n")));
    body.extend(chunk(&format!("id: 1-1\ndata: 2 {now}\n\n"))); // duplicate
    body.extend(chunk(&format!("id: 1-0\ndata: 4 {now}\n\n"))); // out of order
    body.extend(chunk(&format!("id: 2-0\ndata: 1 {now}\n\n"))); // a topic not subscribed
    body.extend(chunk("event: herald.reset\ndata: {}\n\n"));
    body.extend(chunk(&format!("id: 10-0\ndata: w5 {now}\n\n"))); // warm-up
    for step in [1usize, 2, 3, 7, 1000] {
        let sh = Shared::new(2, 1);
        let pieces: Vec<&[u8]> = body.chunks(step).collect();
        feed(&sh, true, &pieces, 2)?;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counts =
            [g(&sh.delivered), g(&sh.duplicates), g(&sh.out_of_order), g(&sh.foreign), g(&sh.resets), g(&sh.warmup)];
        ensure(counts == [3, 1, 1, 1, 1, 1], &format!("chunked SSE in {step}-byte reads: {counts:?}"))?;
    }
    // Nchan's EventSource framing: close-delimited body, `: hi` first, ids that do not order across
    // multiplexed channels (order is checked on the seq in the data for those).
    let mut nchan = Vec::new();
    nchan.extend(b": hi\n\n");
    nchan.extend(format!("id: 1795843508:-,[0]\ndata: w7 {now} xx\n\n").bytes()); // warm-up
    nchan.extend(format!("id: 1795843508:[0],0\ndata: 0 {now} xx\n\n").bytes());
    nchan.extend(format!("id: 1795843508:0,[1]\ndata: 2 {now}\n\n").bytes());
    nchan.extend(format!("id: 1795843508:0,[1]\ndata: 2 {now}\n\n").bytes()); // duplicate
    nchan.extend(format!("id: 1795843509:0,[0]\ndata: 4 {now}\n\n").bytes());
    nchan.extend(format!("id: 1795843509:[1],0\ndata: 1 {now}\n\n").bytes()); // foreign, out of order
    nchan.extend(format!("id: 1795843509:[0],0\ndata: 6 {now}\n\n").bytes());
    for step in [1usize, 5, 1000] {
        let sh = Shared::new(2, 1);
        let pieces: Vec<&[u8]> = nchan.chunks(step).collect();
        feed_as(&sh, false, &pieces, 2, true)?;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counts = [g(&sh.delivered), g(&sh.duplicates), g(&sh.out_of_order), g(&sh.foreign), g(&sh.warmup)];
        ensure(counts == [4, 1, 1, 1, 1], &format!("Nchan SSE in {step}-byte reads: {counts:?}"))?;
    }
    // One channel: plain `time:index` ids give the order (a publisher race that swaps seqs is not
    // the server's doing).
    let sh = Shared::new(1, 1);
    let one = format!(
        ": hi\n\nid: 1795843508:9\ndata: 1 {now}\n\nid: 1795843508:10\ndata: 0 {now}\n\n\
         id: 1795843509:0\ndata: 2 {now}\n\nid: 1795843508:11\ndata: 3 {now}\n\n"
    );
    feed_as(&sh, false, &[one.as_bytes()], 1, true)?;
    let counts = [sh.delivered.load(Ordering::Relaxed), sh.out_of_order.load(Ordering::Relaxed)];
    ensure(counts == [4, 1], &format!("Nchan single-channel ids: {counts:?}"))?;
    let sh = Shared::new(1, 1);
    feed(&sh, false, &[b"data: 0 1\n\ndata: 1 1\n", b"\n"], 1)?;
    ensure(sh.delivered.load(Ordering::Relaxed) == 2, "close-delimited body")?;
    ensure(feed(&Shared::new(1, 1), true, &[b"0\r\n\r\n"], 1).is_err(), "last chunk ends the stream")?;
    ensure(id_cmp(b"1700000000000-12", b"1700000000000-9") == Greater, "id order 1")?;
    ensure(id_cmp(b"9", b"10") == Less, "id order 2")?;
    ensure(id_cmp(b"5-0", b"5-0") == Equal, "id order 3")?;
    let mut seen = SeenSet::default();
    ensure((0..1000).rev().all(|i| seen.insert(i)), "seen set inserts")?;
    ensure(!seen.insert(5) && seen.words.len() <= 1, "seen set compacts")?;
    ensure(seen.insert(5000) && !seen.insert(5000), "seen set duplicates")?;
    ensure(parse_target("http://127.0.0.1:8080").is_ok(), "target 1")?;
    ensure(parse_target("http://localhost:1/x/").is_ok_and(|t| t.base == "/x"), "target 2")?;
    ensure(parse_target("http://[::1]:80").is_ok(), "target 3")?;
    ensure(parse_target("http://10.0.0.1:80").is_err(), "non-loopback target refused")?;
    ensure(parse_target("http://example.com").is_err(), "host names refused")?;
    let ts = parse_targets("http://127.0.0.1:1, http://127.0.0.1:2/b")?;
    ensure(ts.len() == 2 && ts[1].addr.port() == 2 && ts[1].base == "/b", "URL list")?;
    ensure(parse_targets("http://127.0.0.1:1,http://10.0.0.1:2").is_err(), "non-loopback URL in a list refused")?;
    ensure(parse_targets(" , ").is_err(), "empty URL list refused")?;
    ensure(parse_sources("127.0.0.2", &ts).is_ok(), "sources for a URL list")?;
    ensure(parse_sources("::1", &ts).is_err(), "source family checked against every URL")?;
    ensure(parse_pids(Some("12, 34"))? == [12, 34] && parse_pids(None)?.is_empty(), "PID list")?;
    ensure(parse_pids(Some("12,x")).is_err(), "bad PID refused")?;
    let summed = sum_samples(&[
        ProcSample { rss_kib: Some(10), cpu_ticks: Some(1) },
        ProcSample { rss_kib: Some(5), cpu_ticks: None },
    ]);
    ensure(summed.is_some_and(|s| s.rss_kib == Some(15) && s.cpu_ticks.is_none()), "summed samples")?;
    // Deliveries are counted per URL of the receiving connection.
    let sh = Shared::new(1, 2);
    let ctx = Ctx { sh: &sh, topics: 1, per_conn: 1, first: 0, url: 1, nchan_ids: false };
    let mut c = SseConn { f: Framing { buf: Vec::new(), dec: 0, chunk: Chunk::Identity }, st: SseState::default() };
    c.f.buf.extend_from_slice(format!("id: 1\ndata: 0 {now}\n\nid: 2\ndata: 1 {now}\n\n").as_bytes());
    c.process(&ctx, false)?;
    let by_url: Vec<u64> = sh.delivered_by_url.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    ensure(by_url == [0, 2], &format!("deliveries per URL: {by_url:?}"))?;
    let mut h = DenseHist::new();
    h.add_sparse(&[(0, 50), (99, 50)], 995_000);
    let l = h.summary();
    ensure(l.p50_ms == Some(0.01) && l.p99_ms == Some(0.995), "percentiles")?;
    println!("self-test passed");
    Ok(())
}
