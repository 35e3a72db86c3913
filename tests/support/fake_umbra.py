#!/usr/bin/env python3
# NOT umbra, and no test of umbra: a stand-in that speaks umbra's contract
# (`up`, create/list/delete/status, --json, one-line errors) so that the
# test suite itself can be checked without the real daemon:
#
#     UMBRA_BIN=$PWD/tests/support/fake_umbra.py cargo test --tests
#
# Live mounts are bind mounts of the backing dirs and a set is a `cp -a`
# copy of each volume behind a read-only bind mount, so POSIX behaviour is
# exact and sets are true copies. It copies volumes one after the other, so
# `all_volumes_of_a_set_show_one_instant` fails against it, as it should.
# MOCK_BUG=1 makes it corrupt an mtime in every set on start, to watch the
# oracle fail and shrink. Needs root and Python 3.11+ (tomllib).
import sys, os, json, socket, signal, tomllib, fcntl, subprocess, datetime, shutil, time

def die(msg, code=1):
    print("umbra: " + str(msg).replace("\n", " "), file=sys.stderr)
    sys.exit(code)

def parse(argv):
    opts = {"pos": [], "json": False}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--config", "--socket", "--label"):
            opts[a[2:]] = argv[i + 1]; i += 2; continue
        if a == "--json": opts["json"] = True
        else: opts["pos"].append(a)
        i += 1
    return opts

def load_config(path):
    try:
        raw = open(path, "rb").read()
    except OSError as e:
        die(f"reading config {path}: {e}")
    try:
        cfg = tomllib.loads(raw.decode("utf-8"))
    except Exception as e:
        die(f"config {path}: {e}")
    for k in cfg:
        if k not in ("state_dir", "socket", "snapshots", "name_format", "threads", "volume"):
            die(f"config {path}: unknown key `{k}`")
    for k in ("state_dir", "socket", "snapshots"):
        if not isinstance(cfg.get(k), str): die(f"config {path}: `{k}` must be a path")
    vols = cfg.get("volume", [])
    if not isinstance(vols, list): die(f"config {path}: `volume` must be an array of tables")
    for v in vols:
        if not isinstance(v, dict): die(f"config {path}: bad volume")
        for k in v:
            if k not in ("name", "backing", "mount"): die(f"config {path}: unknown key `{k}` in [[volume]]")
        for k in ("name", "backing", "mount"):
            if not isinstance(v.get(k), str): die(f"config {path}: volume needs `{k}`")
    return cfg

def sh(*args):
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0: raise RuntimeError(f"{args}: {r.stderr.strip()}")

def up(opts):
    cfg = load_config(opts["config"])
    state = cfg["state_dir"]
    os.makedirs(state, exist_ok=True)
    lock = open(os.path.join(state, "lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        die(f"state dir {state} is already served by another daemon")
    setsdir = os.path.join(state, "sets")
    os.makedirs(setsdir, exist_ok=True)
    meta_path = os.path.join(state, "sets.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {"next": 1, "sets": []}
    if os.environ.get("MOCK_BUG"):  # an injected bug, see the header
        for st in meta["sets"]:
            f = os.path.join(setsdir, st["name"], "data", "b")
            if os.path.lexists(f) and os.path.isfile(f) and not os.path.islink(f):
                m = os.lstat(f); os.utime(f, ns=(m.st_atime_ns, m.st_mtime_ns + 1))
    mounted = []
    def cleanup():
        for m in reversed(mounted):
            if subprocess.run(["umount", m], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", m], capture_output=True)
    try:
        for v in cfg.get("volume", []):
            sh("mount", "--bind", v["backing"], v["mount"]); mounted.append(v["mount"])
            print(f"umbra: volume {v['name']} live at {v['mount']}", flush=True)
        sh("mount", "--bind", setsdir, cfg["snapshots"]); mounted.append(cfg["snapshots"])
        sh("mount", "-o", "remount,bind,ro", cfg["snapshots"])
        print(f"umbra: snapshots at {cfg['snapshots']}", flush=True)
    except Exception as e:
        cleanup(); die(e)
    sock_path = cfg["socket"]
    if os.path.exists(sock_path): os.unlink(sock_path)
    srv = socket.socket(socket.AF_UNIX); srv.bind(sock_path); srv.listen(8); srv.settimeout(0.1)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    print("umbra: ready", flush=True)
    vols = {v["name"]: v for v in cfg.get("volume", [])}
    def save():
        json.dump(meta, open(meta_path + ".tmp", "w")); os.replace(meta_path + ".tmp", meta_path)
        latest = os.path.join(setsdir, "latest")
        if os.path.lexists(latest): os.unlink(latest)
        if meta["sets"]: os.symlink(meta["sets"][-1]["name"], latest)
    def handle(req):
        cmd = req["cmd"]
        if cmd == "list": return meta["sets"]
        if cmd == "status": return {"volumes": list(vols), "diff_area": {"chunk_bytes": 0, "chunks": 0, "disk_bytes": 4096}, "sets": len(meta["sets"])}
        if cmd == "create":
            names = req["args"] or list(vols)
            for n in names:
                if n not in vols: raise ValueError(f"unknown volume {n}")
            now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
            stem = now.strftime(cfg.get("name_format", "%Y-%m-%dT%H%M%SZ")); name = stem; k = 0
            while any(s["name"] == name for s in meta["sets"]): k += 1; name = f"{stem}-{k}"
            os.makedirs(os.path.join(setsdir, name))
            for n in names:
                sh("cp", "-a", "--preserve=all", vols[n]["mount"], os.path.join(setsdir, name, n))
            s = {"id": meta["next"], "name": name, "created": now.isoformat().replace("+00:00", "Z"), "label": req.get("label"), "volumes": names}
            meta["next"] += 1; meta["sets"].append(s); save(); return s
        if cmd == "delete":
            for n in req["args"]:
                if not any(s["name"] == n for s in meta["sets"]): raise ValueError(f"no such set: {n}")
            for n in req["args"]:
                shutil.rmtree(os.path.join(setsdir, n)); meta["sets"] = [s for s in meta["sets"] if s["name"] != n]
            save(); return None
        raise ValueError(f"unknown command {cmd}")
    while not stop:
        try: conn, _ = srv.accept()
        except socket.timeout: continue
        except InterruptedError: continue
        with conn:
            conn.settimeout(None)
            data = b""
            while not data.endswith(b"\n"):
                c = conn.recv(65536)
                if not c: break
                data += c
            try: resp = {"ok": True, "result": handle(json.loads(data))}
            except Exception as e: resp = {"ok": False, "error": str(e)}
            conn.sendall(json.dumps(resp).encode() + b"\n")
    cleanup(); srv.close(); os.unlink(sock_path); sys.exit(0)

def client(sub, opts):
    sock_path = opts.get("socket") or (opts.get("config") and load_config(opts["config"])["socket"])
    s = socket.socket(socket.AF_UNIX)
    try: s.connect(sock_path)
    except OSError as e: die(f"cannot reach the daemon at {sock_path}: {e.strerror}")
    s.sendall(json.dumps({"cmd": sub, "args": opts["pos"], "label": opts.get("label")}).encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        c = s.recv(65536)
        if not c: break
        data += c
    resp = json.loads(data)
    if not resp["ok"]: die(resp["error"])
    r = resp["result"]
    if opts["json"]: print(json.dumps(r))
    elif isinstance(r, list): [print(f"{x['id']} {x['name']}") for x in r]
    elif isinstance(r, dict) and "name" in r: print(f"{r['id']} {r['name']}")
    elif r is not None: print(r)

sub = sys.argv[1]
opts = parse(sys.argv[2:])
if sub == "up": up(opts)
else: client(sub, opts)
