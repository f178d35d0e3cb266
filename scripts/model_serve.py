#!/usr/bin/env python3
"""Model-based random test of `kpr serve`'s handling of a branch moved under it: pushes,
resets, amends, webhooks (on time, late, twice, never, redelivered), a replica that lags and
restarts, checked after each step against the branch's true history:

  INV1  a push whose webhook came and whose head a replica serves is applied (no lost change);
  INV2  a head the owner reset or force-pushed away is not applied again, except by the
        documented --reset-settle rule;
  INV3  no crash, no stuck run, every failed run reported in /status.

With --outage the replica also goes down and comes back, and the owner fixes the live policy
by hand to what the branch says; kpr's scheduled scans (--interval, 3s) heal from the last good
revision meanwhile, and are checked for it: never a revision a delivered reset or force-push
abandoned (INV2-outage), and no run reported a success while the replica is down.

Seeds from 50000 also SIGKILL kpr soon after a webhook was answered, and start it again.

Run by hand (a seed of 40 steps takes about a minute); scripts/test runs two seeds of 50000 up:

  EMULATOR_TAG=model KINESIS_MOCK_PORT=4850 KINESIS_MOCK_TLS_PORT=4851 MOTO_PORT=4852 \
      scripts/emulators start kinesis-mock
  .venv/bin/python scripts/model_serve.py --endpoint http://127.0.0.1:4850 --seed 3000 --runs 20
  .venv/bin/python scripts/model_serve.py --endpoint http://127.0.0.1:4850 \
      --replay 'push:late:sync,reset:1:now:lag,deliver:0'
  .venv/bin/python scripts/model_serve.py --endpoint http://127.0.0.1:4850 --outage --seed 500
  EMULATOR_TAG=model ... scripts/emulators stop kinesis-mock

Each run keeps its git repositories (origin.git = truth, replica.git = what kpr fetches), its
step list (ops.txt, replayable with --replay) and kpr's log under --work/run-<seed>/.
"""
import argparse, hashlib, hmac, json, os, random, shutil, signal, subprocess, sys, time, urllib.request, uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H = os.path.join(ROOT, "target", "model-serve")
KPR = os.path.join(ROOT, "target", "debug", "kpr")
ENDPOINT = "http://127.0.0.1:4850"


def env():
    return dict(os.environ, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_REGION="us-east-1",
                KPR_ENDPOINT_URL=ENDPOINT, KPR_RATE_LIMIT="0", NO_COLOR="1",
                GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                GIT_COMMITTER_EMAIL="t@t")


SECRET = b"model-secret"
INTERVAL = "24h"
WITH_REPO = False
OUTAGE = False


def sh(*args, cwd=None, check=True):
    r = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{args}: {r.stderr}")
    return r.stdout.strip()


def kin():
    import boto3
    return boto3.client("kinesis", endpoint_url=ENDPOINT, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="x")


class Fail(Exception):
    pass


class World:
    def __init__(self, seed, settle, port, stream):
        self.seed, self.settle, self.port, self.stream = seed, settle, port, stream
        self.d = f"{H}/run-{seed}"
        shutil.rmtree(self.d, ignore_errors=True)
        os.makedirs(self.d)
        self.origin, self.replica, self.work = f"{self.d}/origin.git", f"{self.d}/replica.git", f"{self.d}/work"
        sh("git", "init", "-q", "--bare", "-b", "main", self.origin)
        sh("git", "init", "-q", "--bare", "-b", "main", self.replica)
        with open(f"{self.replica}/objects/info/alternates", "w") as f:
            f.write(f"{self.origin}/objects\n")
        sh("git", "clone", "-q", self.origin, self.work)
        with open(f"{self.d}/secret", "wb") as f:
            f.write(SECRET)
        c = kin()
        try:
            c.create_stream(StreamName=stream, ShardCount=1)
        except Exception:
            pass
        for _ in range(100):
            s = c.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
            if s["StreamStatus"] == "ACTIVE":
                break
            time.sleep(0.2)
        self.arn = s["StreamARN"]
        self.counter = 0
        self.role = {}        # commit -> role name
        self.parent = {}      # commit -> parent
        self.heads = []       # (time, origin head) history
        self.served = []      # (time, replica head) history
        self.pending = []     # webhooks not yet delivered: (delivery, body)
        self.delivered = []   # (time, delivery, payload)
        self.events = []      # step log
        self.proc = None
        self.logpos = 0
        self.log = open(f"{self.d}/serve.log", "ab")
        self.abandoned_informed = {}  # commit -> time the webhook abandoning it was delivered
        self.moves = {}       # delivery -> payload dict
        self.down = False
        self.commit("r0")
        self.set_head(self.last)
        self.sync()

    # ---------- git ----------
    def commit(self, role=None, parent=None):
        if role is None:
            self.counter += 1
            role = f"r{self.counter}"
        if parent is not None:
            sh("git", "checkout", "-q", "--detach", parent, cwd=self.work)
        with open(f"{self.work}/s.yaml", "w") as f:
            f.write(f"""arn: {self.arn}
policy:
  Version: "2012-10-17"
  Statement:
  - Sid: Read
    Effect: Allow
    Principal: {{AWS: "arn:aws:iam::111122223333:role/{role}"}}
    Action: ["kinesis:GetRecords"]
    Resource: {self.arn}
""")
        sh("git", "add", "-A", cwd=self.work)
        sh("git", "commit", "-qm", role, cwd=self.work)
        c = sh("git", "rev-parse", "HEAD", cwd=self.work)
        self.role[c] = role
        self.parent[c] = sh("git", "rev-parse", "--verify", "-q", "HEAD~1", cwd=self.work, check=False) or None
        sh("git", "push", "-q", self.origin, f"{c}:refs/keep/{c}", cwd=self.work)
        self.last = c
        return c

    def head(self):
        return sh("git", "--git-dir", self.origin, "rev-parse", "main", check=False) or None

    def rpath(self):
        return self.replica + ".off" if getattr(self, "down", False) else self.replica

    def rhead(self):
        return sh("git", "--git-dir", self.rpath(), "rev-parse", "main", check=False) or None

    def set_head(self, c):
        sh("git", "--git-dir", self.origin, "update-ref", "refs/heads/main", c)
        self.heads.append((time.time(), c))

    def serve(self, c):
        if self.rhead() != c:
            sh("git", "--git-dir", self.rpath(), "update-ref", "refs/heads/main", c)
            self.served.append((time.time(), c))

    def sync(self):
        self.serve(self.head())

    def ancestors(self, c):
        out = []
        while c:
            out.append(c)
            c = self.parent.get(c)
        return out

    def is_anc(self, a, b):  # a ancestor-or-self of b
        return a in self.ancestors(b)

    def short(self, c):
        return f"{self.role.get(c, '?')}:{c[:7]}" if c else "None"

    # ---------- webhooks ----------
    def payload(self, before, after, forced):
        p = {"ref": "refs/heads/main", "before": before or "0" * 40, "after": after,
             "forced": forced, "_d": str(uuid.uuid4())}
        if WITH_REPO:   # a GitHub payload names its repository; this one is the replica's path's end
            p["repository"] = {"full_name": f"run-{self.seed}/replica"}
        return p

    def deliver(self, p):
        body = json.dumps({k: v for k, v in p.items() if k != "_d"}).encode()
        sig = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/webhook", data=body, method="POST", headers={
            "Content-Type": "application/json", "X-GitHub-Event": "push",
            "X-GitHub-Delivery": p["_d"], "X-Hub-Signature-256": sig})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                code, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            code, text = e.code, e.read().decode()
        self.delivered.append((time.time(), p))
        # A delivered force-push informs kpr that what `before` had beyond `after` was abandoned.
        if p["forced"] or not self.is_anc(p["before"], p["after"]):
            keep = set(self.ancestors(p["after"]))
            for c in self.ancestors(p["before"]):
                if c not in keep:
                    self.abandoned_informed.setdefault(c, time.time())
        self.note(f"  webhook {self.short(p['before'])} -> {self.short(p['after'])} forced={p['forced']} => {code} {text.strip()[:100]}")
        if code not in (200, 202):
            raise Fail(f"webhook answered {code}: {text}")
        return code

    # ---------- kpr ----------
    def start(self):
        self.log.write(f"\n===== start {time.time()} =====\n".encode())
        self.log.flush()
        self.proc = subprocess.Popen([KPR, "serve", "--git-url", f"file://{self.replica}", "--git-branch", "main",
                                      "--workdir", f"{self.d}/wd", "--interval", INTERVAL,
                                      "--listen", f"127.0.0.1:{self.port}",
                                      "--webhook-secret-file", f"{self.d}/secret",
                                      "--reset-settle", f"{self.settle}s", "--retry-delay", "2s",
                                      "--log-format", "json"]
                                     # A file:// URL has no owner/name for payloads to match.
                                     + (["--git-repository", f"run-{self.seed}/replica"] if WITH_REPO else []),
                                     env=env(), stdout=self.log, stderr=self.log)
        for _ in range(200):
            try:
                self.status()
                return
            except Exception:
                if self.proc.poll() is not None:
                    raise Fail(f"kpr exited {self.proc.returncode} at start")
                time.sleep(0.05)
        raise Fail("kpr did not listen")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise Fail("kpr did not exit on SIGTERM within 20s")
            if rc != 0:
                raise Fail(f"kpr exited {rc} on SIGTERM")
        self.proc = None

    def kill_restart(self, after):
        """SIGKILL, `after` seconds from now (mid-run, or not), and start again: a push answered
        202 must still be applied (INV1), a head taken away still refused (INV2)."""
        time.sleep(after)
        self.proc.kill()
        self.proc.wait()
        self.note(f"  killed after {after}s")
        self.start()

    def status(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status", timeout=5) as r:
            return json.load(r)

    def idle(self, timeout=30):
        """Waits for no run running or pending. Returns the status."""
        t0 = time.time()
        n = 0
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise Fail(f"kpr exited {self.proc.returncode}")
            s = self.status()
            if not s.get("running") and not s.get("pending"):
                n += 1
                if n >= 3:
                    return s
            else:
                n = 0
            time.sleep(0.1)
        raise Fail(f"stuck: running/pending for {timeout}s: {json.dumps(self.status())[:400]}")

    def live(self):
        try:
            p = kin().get_resource_policy(ResourceARN=self.arn)["Policy"]
        except Exception as e:
            if "No resource policy" in str(e) or "ResourceNotFound" in str(e):
                return None
            raise
        if not p or p == "{}":
            return None
        return json.loads(p)["Statement"][0]["Principal"]["AWS"].rsplit("/", 1)[1]

    def runs(self):
        """New 'reconcile finished'-like events in the log since last call."""
        with open(f"{self.d}/serve.log", "rb") as f:
            f.seek(self.logpos)
            data = f.read()
        self.logpos += len(data)
        out = []
        for line in data.splitlines():
            try:
                e = json.loads(line)
            except Exception:
                continue
            out.append(e)
        return out

    def note(self, s):
        line = f"[{time.time():.2f}] {s}"
        self.events.append(line)
        with open(f"{self.d}/steps.log", "a") as f:
            f.write(line + "\n")


# ---------------- the model ----------------
def pick(r, table, default=None):
    """The op of the first (limit, op) in `table` whose limit `r` is under, else `default`. An
    op is a string, or a function that draws its arguments: only the one chosen draws, as the
    op list of every seed depends on it."""
    for limit, op in table:
        if r < limit:
            return op() if callable(op) else op
    return default


def move_op(rng, r, mode_weights, rep_weights, limits, tail):
    """A move of the branch, or a delivery, or the replica moved: `limits` are the thresholds
    of push, reset, amend, reheads, deliver, dup, lag and sync; `tail`, more (limit, op) after
    them; then settle."""
    mode = rng.choices(["now", "late", "never", "twice", "kill"][:len(mode_weights)], mode_weights)[0]
    if mode == "kill":  # SIGKILL this many ms after the webhook was answered, then start again
        mode = f"kill{rng.choice([0, 20, 60, 150, 400])}"
    rep = rng.choices(["sync", "lag"], rep_weights)[0]
    ops = [
        f"push:{mode}:{rep}",
        lambda: f"reset:{rng.randint(1, 3)}:{mode}:{rep}",
        f"amend:{mode}:{rep}",
        # a force-push back to an earlier head (maybe abandoned)
        lambda: f"reheads:{rng.randint(1, 6)}:{mode}:{rep}",
        lambda: f"deliver:{rng.randint(0, 9)}",
        "dup",
        lambda: f"lag:{rng.randint(1, 4)}",
        "sync",
    ]
    return pick(r, list(zip(limits, ops)) + tail, "settle")


def service_op(rng, limits, mode_weights):
    """A restart, a lag, a wait or a redelivery, under the thresholds `limits`; else a move of
    the branch whose webhook comes in one of the modes weighted by `mode_weights`."""
    op = pick(rng.random(), list(zip(limits, ["restart",
                                              lambda: f"lag:{rng.randint(1, 3)}",
                                              lambda: f"wait:{rng.choice([1, 2, 4])}",
                                              lambda: f"redeliver:{rng.randint(0, 5)}"])))
    if op:
        return op
    return move_op(rng, rng.random(), mode_weights, [70, 30],
                   [0.25, 0.40, 0.52, 0.58, 0.73, 0.77, 0.85, 0.95], [])


def gen_op(rng, v2=False):
    if OUTAGE:
        op = pick(rng.random(), [(0.14, "down"), (0.26, "up"), (0.34, "hand"),
                                 (0.40, lambda: f"wait:{rng.choice([2, 4])}")])
        if op:
            return op
    r = rng.random()
    if v2 == 5:   # seeds >= 50000 (older seeds keep their op lists): kpr killed (SIGKILL) soon after a webhook, about 1 move in 6
        return service_op(rng, [0.08, 0.16, 0.21, 0.26], [45, 20, 10, 8, 17])
    if v2 == 4:   # seeds >= 3000: restarts weighted higher (about 1 step in 5)
        return service_op(rng, [0.18, 0.26, 0.31, 0.37], [55, 20, 15, 10])
    if v2 == 3:
        r = rng.random()
        op = pick(r, [(0.10, "restart"), (0.20, lambda: f"lag:{rng.randint(1, 3)}"),
                      (0.25, lambda: f"wait:{rng.choice([1, 2, 4])}")])
        if op:
            return op
    if v2 and r < 0.08:
        return f"redeliver:{rng.randint(0, 5)}"
    if v2:
        r = rng.random()
    return move_op(rng, r, [60, 20, 10, 10], [75, 25],
                   [0.25, 0.37, 0.49, 0.54, 0.69, 0.74, 0.82, 0.90], [(0.95, "restart")])


class Model:
    def __init__(self, w):
        self.w = w
        self.applied = []      # (t, commit) completed runs
        self.results = {}
        self.hooked_at = None
        self.truth_hooked = None  # truth commit whose webhook came while the replica served it
        self.violations = []
        self.down_since = None

    def move(self, new, forced, mode, rep):
        w = self.w
        old = w.head()
        if new == old:
            w.note("  (no-op move)")
            return
        w.set_head(new)
        self.truth_hooked = None
        p = w.payload(old, new, forced)
        if rep == "sync":
            w.sync()
        if mode in ("now", "twice") or mode.startswith("kill"):
            self.hook(p)
            if mode == "twice":
                self.w.idle()
                self.hook(p)
            if mode.startswith("kill"):
                w.kill_restart(int(mode[4:]) / 1000)
        elif mode == "late":
            w.pending.append(p)

    def hook(self, p):
        w = self.w
        w.deliver(p)
        if p["after"] == w.head() and w.rhead() == w.head():
            if self.truth_hooked != p["after"]:
                self.hooked_at = time.time()
            self.truth_hooked = p["after"]

    def do(self, op):
        w = self.w
        a = op.split(":")
        w.note(f"STEP {op}   truth={w.short(w.head())} served={w.short(w.rhead())}")
        if a[0] == "push":
            c = w.commit(parent=w.head())
            self.move(c, False, a[1], a[2])
        elif a[0] == "amend":
            par = w.parent.get(w.head()) or w.head()
            c = w.commit(parent=par)
            self.move(c, True, a[1], a[2])
        elif a[0] == "reset":
            anc = w.ancestors(w.head())
            c = anc[min(int(a[1]), len(anc) - 1)]
            self.move(c, True, a[2], a[3])
        elif a[0] == "reheads":
            hs = [h for _, h in w.heads]
            c = hs[max(0, len(hs) - 1 - int(a[1]))]
            forced = not w.is_anc(w.head(), c)
            self.move(c, forced, a[2], a[3])
        elif a[0] == "deliver":
            if w.pending:
                p = w.pending.pop(int(a[1]) % len(w.pending))
                self.hook(p)
        elif a[0] == "dup":
            if w.delivered:
                self.hook(w.delivered[-1][1])
        elif a[0] == "redeliver":   # the same delivery again (same X-GitHub-Delivery), k back
            if w.delivered:
                self.hook(w.delivered[max(0, len(w.delivered) - 1 - int(a[1]))][1])
        elif a[0] == "lag":
            hs = [h for _, h in w.heads]
            w.serve(hs[max(0, len(hs) - 1 - int(a[1]))])
        elif a[0] == "sync":
            w.sync()
        elif a[0] == "down":
            if not w.down:
                os.rename(w.replica, w.replica + ".off"); w.down = True; self.down_since = time.time()
        elif a[0] == "up":
            if w.down:
                os.rename(w.replica + ".off", w.replica); w.down = False
                self.hooked_at = None
        elif a[0] == "hand":   # the owner makes the live policy what the branch now says, by hand
            role = w.role[w.head()]
            doc = {"Version": "2012-10-17", "Statement": [{"Sid": "Read", "Effect": "Allow",
                   "Principal": {"AWS": f"arn:aws:iam::111122223333:role/{role}"},
                   "Action": ["kinesis:GetRecords"], "Resource": w.arn}]}
            kin().put_resource_policy(ResourceARN=w.arn, Policy=json.dumps(doc))
        elif a[0] == "restart":
            w.stop()
            w.start()
        elif a[0] == "wait":
            time.sleep(float(a[1]))
        elif a[0] == "settle":
            time.sleep(w.settle + 1.5)
        s = w.idle()
        self.check(s)

    # ----- invariants -----
    def truth_at(self, t):
        h = None
        for ht, c in self.w.heads:
            if ht <= t:
                h = c
        return h

    def served_since(self, c, t):
        """Since when the replica has served c without a break, as of t (None if not serving c at t)."""
        since = None
        for st, sc in self.w.served:
            if st > t:
                break
            since = st if sc == c and since is None else (since if sc == c else None)
        return since

    def scan_log(self):
        w = self.w
        for e in w.runs():
            msg = e.get("message", "")
            if e.get("level") in ("ERROR",) or "panic" in msg.lower():
                w.note(f"  LOG {e.get('level')} {msg[:200]}")
            if msg.startswith("meanwhile reconciling the resources of the last good revision"):
                good = msg.split("revision ")[1].split(",")[0]
                from datetime import datetime
                t = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
                truth = self.truth_at(t)
                w.note(f"  LOG meanwhile {w.short(good)} truth={w.short(truth)}")
                if good in w.abandoned_informed and w.abandoned_informed[good] < t and not w.is_anc(good, truth):
                    v = f"INV2-outage reconciled {w.short(good)} meanwhile, abandoned by a delivered force-push/reset; truth={w.short(truth)}"
                    w.note("  !! " + v); self.violations.append(v)
            if msg != "reconcile finished":
                if "taken as where its owner put it" in msg or "late webhook" in msg or "refused" in msg or "behind" in msg:
                    w.note(f"  LOG {msg[:220]}")
                continue
            res = e.get("result")
            self.results[res] = self.results.get(res, 0) + 1
            rev = (e.get("span") or {}).get("revision")
            from datetime import datetime
            t = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
            w.note(f"  RUN {res} {w.short(rev)} trigger={(e.get('span') or {}).get('trigger')}")
            if res not in ("success", "partial") or not rev:
                continue
            prev = self.applied[-1][1] if self.applied else None
            self.applied.append((t, rev))
            if rev == prev:
                continue
            truth = self.truth_at(t)
            since = self.served_since(rev, t)
            settled = since is not None and since <= t - w.settle + 0.05
            if rev == truth or settled:
                continue
            why = None
            if prev and w.is_anc(rev, prev) and w.is_anc(prev, truth):
                why = f"rolled back from {w.short(prev)} (on the true branch) to {w.short(rev)}"
            elif not w.is_anc(rev, truth) and rev in w.abandoned_informed and w.abandoned_informed[rev] < t:
                why = f"applied {w.short(rev)}, abandoned by a force-push whose webhook was delivered"
            if why:
                v = f"INV2 {why}; truth={w.short(truth)} served_since={since and round(t - since, 2)}"
                w.note("  !! " + v)
                self.violations.append(v)

    def check(self, s):
        w = self.w
        self.scan_log()
        lr = s.get("last_run") or {}
        if lr.get("result") not in (None, "success", "partial") and not s.get("last_error"):
            v = f"INV3 last_run {lr.get('result')} but no last_error"
            w.note("  !! " + v); self.violations.append(v)
        truth = w.head()
        from datetime import datetime
        if w.down and lr.get("result") in ("success", "partial") and self.down_since and \
                datetime.fromisoformat(lr["started_at"].replace("Z", "+00:00")).timestamp() > self.down_since + 0.5:
            v = f"STATUS last_run {lr.get('result')} during the outage"
            w.note("  !! " + v); self.violations.append(v)
        if self.truth_hooked == truth and w.rhead() == truth and not w.down:
            want = w.role[truth]
            t0 = time.time()
            while True:
                live = w.live()
                s = w.idle()
                if live == want and s.get("last_good_revision") == truth:
                    took = time.time() - (self.hooked_at or time.time())
                    self.hooked_at = None
                    if took > w.settle - 0.3:
                        v = f"INV1b truth {w.short(truth)} hooked in sync but applied only after {took:.1f}s (the settle rule, not the webhook)"
                        w.note("  !! " + v); self.violations.append(v)
                    break
                if time.time() - t0 > w.settle + 8:
                    v = f"INV1 truth {w.short(truth)} hooked in sync, replica in sync, but live={live} last_good={w.short(s.get('last_good_revision'))} after {w.settle + 8}s; status={json.dumps({k: s.get(k) for k in ('last_error', 'next_retry', 'awaited_commit')})[:500]}"
                    w.note("  !! " + v); self.violations.append(v)
                    break
                time.sleep(0.2)
            self.scan_log()
        w.note(f"  end: live={w.live()} last_good={w.short(s.get('last_good_revision'))} awaited={w.short(s.get('awaited_commit'))} next_retry={s.get('next_retry')}")


def run(seed, steps, settle, port, ops=None, stop_on_fail=True):
    rng = random.Random(seed)
    w = World(seed, settle, port, f"m{seed}")
    m = Model(w)
    gen = 5 if seed >= 50000 else 4 if seed >= 3000 else 3 if seed >= 2000 else seed >= 1000
    ops = ops if ops is not None else [gen_op(rng, gen) for _ in range(steps)]
    with open(f"{w.d}/ops.txt", "w") as f:
        f.write(",".join(ops) + "\n")
    done = 0
    try:
        w.start()
        m.check(w.idle())
        for op in ops:
            m.do(op)
            done += 1
            if m.violations and stop_on_fail:
                break
    except Fail as e:
        m.violations.append(f"FAIL {e}")
        w.note(f"  !! FAIL {e}")
    finally:
        try:
            w.stop()
        except Fail as e:
            m.violations.append(f"FAIL {e}")
    return m, done, ops


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--settle", type=int, default=3)
    ap.add_argument("--port", type=int, default=4855, help="where kpr serve listens")
    ap.add_argument("--endpoint", default=ENDPOINT, help="the kinesis-mock kpr and the checks use")
    ap.add_argument("--kpr", default=KPR, help="the kpr binary [target/debug/kpr]")
    ap.add_argument("--work", default=H, help="where runs are kept [target/model-serve]")
    ap.add_argument("--keep-going", action="store_true", help="do not stop at the first violation")
    ap.add_argument("--replay", default=None, help="comma-separated op list (see ops.txt of a run)")
    ap.add_argument("--with-repo", action="store_true", help="payloads carry repository.full_name (this repo's)")
    ap.add_argument("--outage", action="store_true",
                    help="also take the replica down and up, and fix live by hand (needs scans: --interval)")
    ap.add_argument("--interval", default=None, help="kpr's schedule [24h; 3s with --outage]")
    a = ap.parse_args()
    OUTAGE = a.outage
    INTERVAL = a.interval or ("3s" if a.outage else "24h")
    WITH_REPO = a.with_repo
    ENDPOINT, KPR, H = a.endpoint, a.kpr, os.path.abspath(a.work)
    # Any violation makes the exit status 1, for a loop that runs seeds until one fails.
    failed = False
    total = 0
    for seed in range(a.seed, a.seed + a.runs):
        ops = a.replay.split(",") if a.replay else None
        m, done, ops = run(seed, a.steps, a.settle, a.port, ops, stop_on_fail=not a.keep_going)
        total += done
        print(f"seed {seed}: {done} steps, runs {m.results}, violations {len(m.violations)}", flush=True)
        for v in m.violations:
            print("   ", v, flush=True)
        if m.violations:
            failed = True
            print(f"    ops: {','.join(ops[:done + 1])}", flush=True)
    print(f"total steps {total}")
    sys.exit(1 if failed else 0)
