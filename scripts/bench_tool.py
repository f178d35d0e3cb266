#!/usr/bin/env python3
"""Helpers for scripts/bench (standard library only, loopback only).

  setup   create N streams on kinesis-mock, wait until ACTIVE, write one manifest per stream,
          and put each manifest's policy (everything in sync)
  drift   overwrite every 10th live policy (offset-selectable) with a stale one
  floor   GetResourcePolicy for every manifest's ARN from a minimal keep-alive client, at a few
          concurrencies; prints requests/s per concurrency as JSON
  edit    rewrite K manifests (new principal) and print their ARNs
  wait    poll until the live policies of the given ARNs carry the given principal
  proxy   a counting (and optionally rate-limiting) HTTP proxy; GET /__stats, POST /__reset
  report  the markdown report of scripts/bench's results.jsonl

kinesis-mock does not verify signatures but wants an Authorization header and a date: a fixed
dummy SigV4 header is sent. The client is deliberately minimal (one request at a time per
connection, no TLS, no signing) so that its throughput is the floor kpr is compared with.
"""

import argparse
import asyncio
import json
import os
import ssl
import statistics
import sys
import time

AUTH = (
    "AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/kinesis/aws4_request, "
    "SignedHeaders=host, Signature=00"
)
TARGET = "Kinesis_20131202."
REGION = "us-east-1"
ACCOUNT = "000000000000"


def host_port(url):
    hp = url.split("://", 1)[-1].rstrip("/")
    host, port = hp.rsplit(":", 1)
    return host, int(port)


class Conn:
    """One keep-alive HTTP/1.1 connection speaking the Kinesis JSON protocol."""

    def __init__(self, url):
        self.host, self.port = host_port(url)
        self.reader = self.writer = None
        self.prefix = (
            f"POST / HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/x-amz-json-1.1\r\nX-Amz-Date: 20250101T000000Z\r\n"
            f"Authorization: {AUTH}\r\n"
        ).encode()

    async def call(self, op, body):
        payload = json.dumps(body).encode()
        req = (
            self.prefix
            + f"X-Amz-Target: {TARGET}{op}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        for attempt in range(2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                self.writer.write(req)
                status, _, data = await read_message(self.reader)
                return status, data
            except (ConnectionError, asyncio.IncompleteReadError):
                self.writer = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


async def read_message(reader):
    """Reads one HTTP/1.1 message with a Content-Length body: (status or request line, headers, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    first = lines[0]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", ""):
        raise ValueError("chunked bodies are not supported by this minimal client")
    n = int(headers.get("content-length", "0"))
    body = await reader.readexactly(n) if n else b""
    if first.startswith("HTTP/"):
        return int(first.split()[1]), headers, body
    return first, (head, headers), body


async def run_calls(url, calls, concurrency):
    """Runs (op, body) calls over `concurrency` connections; returns [(status, body)] in order."""
    results = [None] * len(calls)
    next_i = 0

    async def worker():
        nonlocal next_i
        conn = Conn(url)
        while next_i < len(calls):
            i = next_i
            next_i += 1
            results[i] = await conn.call(*calls[i])
        if conn.writer:
            conn.writer.close()

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(calls))))))
    return results


def arn_of(name):
    return f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{name}"


def policy(arn, principal):
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Read",
                "Effect": "Allow",
                "Principal": {"AWS": principal},
                "Action": ["kinesis:GetRecords", "kinesis:GetShardIterator", "kinesis:DescribeStreamSummary"],
                "Resource": arn,
            }
        ],
    }


def principal_for(i, generation=0):
    return f"arn:aws:iam::111122223333:role/reader-{i}-g{generation}"


def manifest_text(arn, pol):
    st = pol["Statement"][0]
    actions = ", ".join(st["Action"])
    return (
        f"arn: {arn}\npolicy:\n  Version: \"2012-10-17\"\n  Statement:\n"
        f"    - Sid: Read\n      Effect: Allow\n      Principal: {{AWS: \"{st['Principal']['AWS']}\"}}\n"
        f"      Action: [{actions}]\n      Resource: {arn}\n"
    )


def manifest_path(d, i):
    return os.path.join(d, f"s{i:05d}.yaml")


def read_arns(d):
    arns = []
    for name in sorted(os.listdir(d)):
        if name.endswith(".yaml"):
            with open(os.path.join(d, name)) as f:
                arns.append(f.readline().split(": ", 1)[1].strip())
    return arns


def check(results, what, ok=(200,)):
    bad = [r for r in results if r[0] not in ok]
    if bad:
        raise SystemExit(f"{what}: {len(bad)} calls failed, e.g. {bad[0]}")


async def setup(a):
    os.makedirs(a.out, exist_ok=True)
    names = [f"{a.prefix}-{i:05d}" for i in range(a.n)]
    if a.manifests_only:
        for i, n in enumerate(names):
            arn = arn_of(n)
            with open(manifest_path(a.out, i), "w") as f:
                f.write(manifest_text(arn, policy(arn, principal_for(i))))
        print(json.dumps({"manifests": a.n}))
        return
    t0 = time.monotonic()
    # kinesis-mock lets 5 streams be CREATING at once (instance-wide): more in flight only buys
    # LimitExceededException, which is retried.
    pending = list(names)
    while pending:
        res = await run_calls(a.endpoint, [("CreateStream", {"StreamName": n, "ShardCount": 1}) for n in pending], 5)
        check(res, "CreateStream", ok=(200, 400))
        for status, body in res:
            if status != 200 and b"LimitExceededException" not in body and b"ResourceInUseException" not in body:
                raise SystemExit(f"CreateStream: {body[:200]!r}")
        pending = [n for n, (status, body) in zip(pending, res) if status != 200 and b"LimitExceeded" in body]
        if pending:
            await asyncio.sleep(0.02)
    created = time.monotonic()
    pending = list(names)
    deadline = time.monotonic() + 600
    while pending:
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(pending)} streams not ACTIVE after 600 s")
        res = await run_calls(a.endpoint, [("DescribeStreamSummary", {"StreamName": n}) for n in pending], a.concurrency)
        check(res, "DescribeStreamSummary")
        pending = [
            n for n, (_, body) in zip(pending, res)
            if json.loads(body)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE"
        ]
        if pending:
            await asyncio.sleep(0.2)
    active = time.monotonic()
    puts = []
    for i, n in enumerate(names):
        arn = arn_of(n)
        pol = policy(arn, principal_for(i))
        with open(manifest_path(a.out, i), "w") as f:
            f.write(manifest_text(arn, pol))
        puts.append(("PutResourcePolicy", {"ResourceARN": arn, "Policy": json.dumps(pol)}))
    if not a.no_policies:
        res = await run_calls(a.endpoint, puts, a.concurrency)
        check(res, "PutResourcePolicy")
    done = time.monotonic()
    print(json.dumps({
        "streams": a.n,
        "create_s": round(created - t0, 2),
        "until_active_s": round(active - t0, 2),
        "total_s": round(done - t0, 2),
    }))


async def drift(a):
    arns = read_arns(a.dir)
    chosen = [arn for i, arn in enumerate(arns) if i % a.every == a.offset % a.every]
    calls = [
        ("PutResourcePolicy", {"ResourceARN": arn, "Policy": json.dumps(policy(arn, f"arn:aws:iam::999999999999:role/stale-{a.offset}"))})
        for arn in chosen
    ]
    check(await run_calls(a.endpoint, calls, 16), "PutResourcePolicy")
    print(len(chosen))


async def relayout(a):
    """Rewrites every live policy as another tool might (keys sorted, indented): the same
    policy in other bytes, so kpr's plan must compare meanings and still find it in sync."""
    arns = read_arns(a.dir)
    got = await run_calls(a.endpoint, [("GetResourcePolicy", {"ResourceARN": arn}) for arn in arns], 16)
    check(got, "GetResourcePolicy")
    calls = []
    for arn, (_, body) in zip(arns, got):
        doc = json.loads(json.loads(body)["Policy"])
        calls.append(("PutResourcePolicy", {"ResourceARN": arn, "Policy": json.dumps(doc, sort_keys=True, indent=2)}))
    check(await run_calls(a.endpoint, calls, 16), "PutResourcePolicy")
    print(len(calls))


async def floor(a):
    arns = read_arns(a.dir)
    calls = [("GetResourcePolicy", {"ResourceARN": arn}) for arn in arns]
    # Warm-up: connections and the emulator's JIT.
    await run_calls(a.endpoint, calls[: min(len(calls), 200)], 8)
    out = {}
    for c in [int(x) for x in a.concurrency.split(",")]:
        t0 = time.monotonic()
        res = await run_calls(a.endpoint, calls, c)
        dt = time.monotonic() - t0
        check(res, "GetResourcePolicy")
        out[str(c)] = round(len(calls) / dt, 1)
    print(json.dumps(out))


def edit(a):
    arns = read_arns(a.dir)
    step = max(1, len(arns) // a.k)
    chosen = list(range(0, len(arns), step))[: a.k]
    for i in chosen:
        arn = arns[i]
        with open(manifest_path(a.dir, i), "w") as f:
            f.write(manifest_text(arn, policy(arn, principal_for(i, a.generation))))
    print("\n".join(arns[i] + " " + principal_for(i, a.generation) for i in chosen))


async def wait(a):
    wanted = [line.split() for line in open(a.arns) if line.strip()]
    deadline = time.monotonic() + a.timeout
    t0 = time.monotonic()
    while True:
        res = await run_calls(a.endpoint, [("GetResourcePolicy", {"ResourceARN": arn}) for arn, _ in wanted], 8)
        done = sum(
            1 for (arn, principal), (status, body) in zip(wanted, res)
            if status == 200 and principal in json.loads(body).get("Policy", "")
        )
        if done == len(wanted):
            print(json.dumps({"converged_s": round(time.monotonic() - t0, 3)}))
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {done}/{len(wanted)} policies applied after {a.timeout} s")
        await asyncio.sleep(a.poll)


def concurrency_table(w, by, sizes, sweep):
    w("\n## kpr plan by --concurrency (in sync)\n")
    concs = sorted({r["concurrency"] for r in sweep})
    w("| N | " + " | ".join(f"c={c} s (req/s)" for c in concs) + " | floor req/s by client concurrency |")
    w("|---|" + "---|" * len(concs) + "---|")
    for n in sizes:
        cells = []
        for c in concs:
            runs = [r for r in sweep if r["n"] == n and r["concurrency"] == c]
            cells.append(f"{runs[0]['wall_s']:.2f} ({n / runs[0]['wall_s']:.0f})" if runs else "-")
        floor = next(r["rps"] for r in by("floor") if r["n"] == n and not r.get("repeat"))
        w(f"| {n} | " + " | ".join(cells) + " | " + ", ".join(f"c={c}: {v:.0f}" for c, v in floor.items()) + " |")


def report(a):
    recs = [json.loads(line) for line in open(a.results) if line.strip()]
    by = lambda kind: [r for r in recs if r["kind"] == kind]
    machine = by("machine")[0]
    sizes = sorted({r["n"] for r in by("plan")})
    out = []
    w = out.append
    w("# kpr benchmark\n")
    w(f"- date: {machine['date']}; {machine['kpr']}; Linux {machine['kernel']}")
    w(f"- machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['mem_gib']} GiB RAM; load average "
      f"{machine.get('loadavg_start', '?')} at the start, {(by('end') or [{}])[0].get('loadavg', '?')} at the end")
    w("- backend: kinesis-mock (npm kinesis-local) on loopback, one instance per N; kpr release build,")
    w("  `--rate-limit 0` (no per-account limit against a local emulator) unless stated; apply at the")
    w("  concurrency that planned fastest; `kpr serve` at its default concurrency (8)")
    w("- CPU = user + sys of the kpr process (includes start-up and manifest loading); RSS = peak")
    w("- calls are counted in separate runs through a counting proxy; timed runs go direct\n")
    mib = lambda kib: f"{kib / 1024:.1f}"
    targets = []

    def target(name, ok, figure):
        targets.append((name, "n/a" if ok is None else ("PASS" if ok else "FAIL"), figure))

    rows = []
    plan_cpu = {}
    exchange_notes = []
    for n in sizes:
        setup = next((r["setup"] for r in by("setup") if r["n"] == n), {})
        vals = [r for r in by("validate") if r["n"] == n]
        val = min(vals, key=lambda r: r["wall_s"]) if vals else None
        plans = [r for r in by("plan") if r["n"] == n]
        best = min(plans, key=lambda r: r["wall_s"])
        rps = n / best["wall_s"]
        floors = [(c, v) for r in by("floor") if r["n"] == n for c, v in r["rps"].items()]
        # --cpu-only runs measure CPU alone: no throughput floor, apply or call counts.
        full = bool(floors)
        fc, frps = max(floors, key=lambda kv: kv[1]) if full else (None, None)
        # CPU: the least of the runs at the best concurrency (the sweep's and the rounds): on a
        # shared machine, noise only ever adds CPU time.
        cpu_runs = [r["cpu_s"] for r in plans if r["concurrency"] == best["concurrency"]]
        cpu_s = min(cpu_runs)
        cpu_us = cpu_s / n * 1e6
        plan_cpu[n] = cpu_s
        xf = [r["cpu_s"] for r in by("xfloor") if r["n"] == n]
        ones = [r["cpu_s"] for r in by("plan_one") if r["n"] == n]
        if ones and n > 1:
            # Start-up is per run, not per resource: the plan of one resource, least of the
            # same rounds, stands for it (with that one resource's own share, ~1% of it).
            startup_s = min(ones)
            excl_us = (cpu_s - startup_s) / (n - 1) * 1e6
            exchange_notes.append(
                f"N={n}: start-up (a plan of one resource, least of {len(ones)}, median "
                f"{statistics.median(ones) * 1e3:.1f} ms) {startup_s * 1e3:.1f} ms, "
                f"{startup_s / n * 1e6:.0f} µs per resource at this N; without it kpr's CPU is "
                f"{excl_us:.0f} µs per resource")
            target(f"kpr CPU < 100 µs per resource, plan in sync (N={n}; start-up excluded)", excl_us < 100,
                   f"{excl_us:.0f} µs (start-up {startup_s * 1e3:.1f} ms)")
        tls_ones = [r["cpu_s"] for r in by("plan_one_tls") if r["n"] == n]
        if tls_ones and ones:
            exchange_notes.append(
                f"N={n}: start-up over TLS (a plan of one resource through a TLS-terminating proxy, "
                f"the system's root certificates trusted, least of {len(tls_ones)}, median "
                f"{statistics.median(tls_ones) * 1e3:.1f} ms) {min(tls_ones) * 1e3:.1f} ms against "
                f"{min(ones) * 1e3:.1f} ms over plain HTTP")
        if xf:
            xf_us = min(xf) / n * 1e6
            load = min((r["cpu_s"] for r in vals), default=None)
            load_note = (f", of which loading the manifests (`kpr validate`, least of {sum(r.get('runs', 1) for r in vals)}) is "
                         f"{load / n * 1e6:.0f} µs" if load is not None else "")
            exchange_notes.append(
                f"N={n}: kpr {cpu_us:.0f} µs per resource (least of {len(cpu_runs)} runs, median "
                f"{statistics.median(cpu_runs) / n * 1e6:.0f}); the exchange alone {xf_us:.0f} µs per call (least of "
                f"{len(xf)}, median {statistics.median(xf) / n * 1e6:.0f}), so kpr's own work is "
                f"{cpu_us - xf_us:.0f} µs{load_note}")
        relaid = [r["cpu_s"] for r in by("plan_relayout") if r["n"] == n]
        if relaid:
            exchange_notes.append(
                f"N={n}, every live policy rewritten by another tool (keys sorted, indented; still in sync): kpr "
                f"{min(relaid) / n * 1e6:.0f} µs per resource (least of {len(relaid)}, median "
                f"{statistics.median(relaid) / n * 1e6:.0f})")
        target(f"kpr CPU < 100 µs per resource, plan in sync (N={n}; start-up included)", cpu_us < 100, f"{cpu_us:.0f} µs")
        if not full:
            continue
        ratio = rps / frps
        ap = next(r for r in by("apply") if r["n"] == n)
        calls = n + 2 * ap["changed"]
        rows.append(f"| {n} | {setup.get('total_s', '?')} | {val['wall_s'] if val else '-'} | {best['wall_s']:.2f} ({best['concurrency']}) "
          f"| {rps:.0f} | {frps:.0f} ({fc}) | {ratio:.2f} | {cpu_us:.0f} | {mib(best['rss_kib'])} "
          f"| {ap['wall_s']:.2f} | {calls / ap['wall_s']:.0f} | {ap['cpu_s'] / n * 1e6:.0f} | {mib(ap['rss_kib'])} |")
        target(f"plan throughput >= 0.9 x floor (N={n})", ratio >= 0.9, f"{ratio:.2f} ({rps:.0f} vs {frps:.0f} req/s)")
        pc = next((r["stats"] for r in by("plan_calls") if r["n"] == n), None)
        if pc:
            ok = pc["per_op"] == {"GetResourcePolicy": n} and pc["calls_per_resource_histogram"] == {"1": n}
            target(f"plan in sync: exactly 1 read per resource, nothing else (N={n})", ok,
                   f"{pc['total']} calls {pc['per_op']}")
        ac = next((r for r in by("apply_calls") if r["n"] == n), None)
        if ac:
            st, k = ac["stats"], ac["changed"]
            want_ops = {"GetResourcePolicy": n + k, "PutResourcePolicy": k}
            want_hist = {"1": n - k, "3": k}
            ok = st["per_op"] == want_ops and st["calls_per_resource_histogram"] == want_hist
            target(f"apply: 1 read per unchanged, read + write + verify read per change (N={n}, {k} changed)", ok,
                   f"{st['total']} calls {st['per_op']}; calls/resource {st['calls_per_resource_histogram']}")
    if rows:
        w("## Per size\n")
        w("| N | setup s | validate s | plan s (best c) | plan req/s | floor req/s (c) | plan / floor | plan CPU µs/res | plan RSS MiB | apply 10% s | apply req/s | apply CPU µs/res | apply RSS MiB |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        out.extend(rows)
    if exchange_notes:
        w("\nCPU floor (src/bin/exchange_floor.rs: the same requests through kpr's HTTP transport at the same "
          "concurrency, nothing else; run in rounds interleaved with kpr's): " + "; ".join(exchange_notes) + ".")
    if len(sizes) >= 2:
        n1, n2 = sizes[-2], sizes[-1]
        marginal = (plan_cpu[n2] - plan_cpu[n1]) / (n2 - n1) * 1e6
        w(f"\nMarginal plan CPU between N={n1} and N={n2} (start-up excluded): {marginal:.0f} µs per resource.")
        target(f"kpr CPU < 100 µs per resource, marginal (N={n1} -> {n2})", marginal < 100, f"{marginal:.0f} µs")
    sweep = [r for r in by("plan") if not r.get("repeat")]
    if sweep:
        concurrency_table(w, by, sizes, sweep)
    v10 = next((r for r in by("validate") if r["n"] == 10000 and r.get("runs") == 3), None)
    if v10:
        target("kpr validate of 10,000 manifests < 1 s", v10["wall_s"] < 1.0,
               f"{v10['wall_s']:.2f} s (best of {v10['runs']}), CPU {v10['cpu_s']} s, RSS {mib(v10['rss_kib'])} MiB")
    for r in by("rate"):
        st = r["stats"]
        accepted = st["total"] - st["throttled"]
        ideal = accepted / 5
        ratio = r["wall_s"] / ideal
        target(f"apply behind a 5 req/s limit with --rate-limit 5 within 1.3 x ideal (N={r['n']}, {r['changed']} changed)",
               r["rc"] == 0 and ratio <= 1.3,
               f"{r['wall_s']:.1f} s for {accepted} calls (ideal {ideal:.1f} s: {ratio:.2f} x), {st['throttled']} throttled, exit {r['rc']}")
    serve = by("serve")
    if serve:
        w("\n## kpr serve\n")
        w("| N | first full reconcile s | peak RSS MiB | idle RSS MiB | webhook -> 100 applied, dir source s | git source: first reconcile s | webhook -> 100 applied, git source s |")
        w("|---|---|---|---|---|---|---|")
        for s in serve:
            w(f"| {s['n']} | {s['first_reconcile_s']} | {mib(s['peak_rss_kib'])} | {mib(s['idle_rss_kib'])} "
              f"| {s['webhook_dir_s'] if s['webhook_dir_s'] is not None else '-'} | {s['git_first_reconcile_s'] if s['git_first_reconcile_s'] is not None else '-'} "
              f"| {s['webhook_git_s'] if s['webhook_git_s'] is not None else '-'} |")
        for s in serve:
            target(f"serve idle RSS < 20 MiB (after reconciling {s['n']} resources)", s["idle_rss_kib"] < 20 * 1024, f"{mib(s['idle_rss_kib'])} MiB")
        big = max(serve, key=lambda s: s["n"])
        target("serve RSS < 64 MiB while reconciling 10,000 resources", big["peak_rss_kib"] < 64 * 1024 if big["n"] >= 10000 else None,
               f"{mib(big['peak_rss_kib'])} MiB peak at N={big['n']}" + ("" if big["n"] >= 10000 else " (10,000 not run)"))
        for s in serve:
            if s["webhook_dir_s"] is not None or s["webhook_git_s"] is not None:
                target(f"signed webhook -> last of 100 changed policies applied (N={s['n']})", None,
                       f"git source (incremental): {s['webhook_git_s']} s; directory source (incremental, by content): {s['webhook_dir_s']} s")
    elif by("apply"):
        reason = by("serve_skipped")[0]["reason"] if by("serve_skipped") else "not run"
        target("serve idle RSS < 20 MiB / < 64 MiB reconciling 10,000; webhook convergence", None, f"skipped: {reason}")
    w("\n## Targets\n")
    w("| target | result | figure |")
    w("|---|---|---|")
    for name, res, fig in targets:
        w(f"| {name} | {res} | {fig} |")
    creates = by("create")
    if creates:
        w("\nFirst apply (every policy created, verified by reading it back): " + "; ".join(
            f"N={r['n']}: {r['wall_s']:.1f} s, CPU {r['cpu_s'] / r['n'] * 1e6:.0f} µs per resource, peak RSS "
            f"{mib(r['rss_kib'])} MiB" for r in creates) + ".")
    setups = [(r["n"], r["setup"]) for r in by("setup")]
    if setups:
        w("\nSetup (kinesis-mock, streams CREATING 10 ms, at most 5 at once): "
          + "; ".join(f"N={n}: create {s['create_s']} s, all ACTIVE {s['until_active_s']} s, with policies {s['total_s']} s" for n, s in setups))
    print("\n".join(out))


class Proxy:
    def __init__(self, upstream, rate, burst):
        self.upstream = upstream
        self.rate, self.burst = rate, burst
        self.tokens, self.last = burst, time.monotonic()
        self.reset()

    def reset(self):
        self.total = 0
        self.throttled = 0
        self.per_op = {}
        self.per_arn = {}

    def take(self):
        if not self.rate:
            return True
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def stats(self):
        hist = {}
        for n in self.per_arn.values():
            hist[n] = hist.get(n, 0) + 1
        return {
            "total": self.total,
            "throttled": self.throttled,
            "per_op": self.per_op,
            "resources": len(self.per_arn),
            "calls_per_resource_histogram": {str(k): v for k, v in sorted(hist.items())},
        }

    async def handle(self, reader, writer):
        up = None
        try:
            while True:
                try:
                    first, (head, headers), body = await read_message(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if first.startswith("GET /__stats") or first.startswith("POST /__reset"):
                    if first.startswith("POST"):
                        self.reset()
                    payload = json.dumps(self.stats()).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
                    await writer.drain()
                    continue
                op = headers.get("x-amz-target", "").replace(TARGET, "")
                try:
                    arn = json.loads(body or b"{}").get("ResourceARN", "")
                except ValueError:
                    arn = ""
                self.total += 1
                self.per_op[op] = self.per_op.get(op, 0) + 1
                if arn:
                    self.per_arn[arn] = self.per_arn.get(arn, 0) + 1
                if not self.take():
                    self.throttled += 1
                    payload = json.dumps({"__type": "LimitExceededException", "message": "Rate exceeded"}).encode()
                    writer.write(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(payload) + payload
                    )
                    await writer.drain()
                    continue
                if up is None:
                    up = await asyncio.open_connection(*host_port(self.upstream))
                up[1].write(head + body)
                rhead = await up[0].readuntil(b"\r\n\r\n")
                n = 0
                for line in rhead.decode("latin-1").split("\r\n")[1:]:
                    if line.lower().startswith("content-length:"):
                        n = int(line.split(":", 1)[1])
                rbody = await up[0].readexactly(n) if n else b""
                writer.write(rhead + rbody)
                await writer.drain()
        finally:
            writer.close()
            if up:
                up[1].close()


async def proxy(a):
    p = Proxy(a.upstream, a.rate, a.burst or a.rate)
    tls = None
    if a.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(a.tls_cert, a.tls_key)
    server = await asyncio.start_server(p.handle, "127.0.0.1", a.port, ssl=tls)
    scheme = "https" if tls else "http"
    print(f"proxy listening on {scheme}://127.0.0.1:{a.port} -> {a.upstream}", flush=True)
    async with server:
        await server.serve_forever()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--prefix", required=True)
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--concurrency", type=int, default=16)
    s.add_argument("--manifests-only", action="store_true", help="write the manifests, create nothing")
    s.add_argument("--no-policies", action="store_true", help="create the streams, put no policy (kpr apply will)")
    s = sub.add_parser("drift")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--dir", required=True)
    s.add_argument("--every", type=int, default=10)
    s.add_argument("--offset", type=int, default=0)
    s = sub.add_parser("relayout")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--dir", required=True)
    s = sub.add_parser("floor")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--dir", required=True)
    s.add_argument("--concurrency", default="1,4,8,16,32,64")
    s = sub.add_parser("edit")
    s.add_argument("--dir", required=True)
    s.add_argument("--k", type=int, required=True)
    s.add_argument("--generation", type=int, default=1)
    s = sub.add_parser("wait")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--arns", required=True, help="file of 'ARN PRINCIPAL' lines (edit's output)")
    s.add_argument("--timeout", type=float, default=300)
    s.add_argument("--poll", type=float, default=0.05)
    s = sub.add_parser("proxy")
    s.add_argument("--upstream", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--rate", type=float, default=0, help="requests/s allowed (0: no limit)")
    s.add_argument("--burst", type=float, default=0, help="token bucket size [default: rate]")
    s.add_argument("--tls-cert", help="serve TLS with this certificate (PEM) ...")
    s.add_argument("--tls-key", help="... and this key")
    s = sub.add_parser("report")
    s.add_argument("--results", required=True)
    a = ap.parse_args()
    if a.cmd == "edit":
        edit(a)
        return
    if a.cmd == "report":
        report(a)
        return
    asyncio.run({"setup": setup, "drift": drift, "relayout": relayout, "floor": floor, "wait": wait, "proxy": proxy}[a.cmd](a))


if __name__ == "__main__":
    main()
