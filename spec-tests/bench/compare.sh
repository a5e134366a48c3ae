#!/usr/bin/env bash
# Side-by-side benchmark: Synapse (from PyPI, SQLite by default or PostgreSQL with
# `--synapse-db postgres`) and Myelin (release build), both on loopback, driven by
# myelin-load with identical parameters. Writes spec-tests/bench/RESULTS.md.
#
#   spec-tests/bench/compare.sh [--synapse-db sqlite|postgres] [--quick]
#
# --quick shrinks every scenario (for a smoke run); the defaults are the issue's sizes.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
bench="$root/spec-tests/bench"
work="$bench/run"
db=sqlite
quick=0
while [ $# -gt 0 ]; do
    case "$1" in
        --synapse-db) db="$2"; shift 2 ;;
        --quick) quick=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
SYNAPSE_VERSION=1.163.2

# Scenario sizes (the issue's): send 20 clients, fanout 20 syncers at 20 msg/s,
# initial sync 50 rooms x 100 messages, join storm 100 users, scale 1000 syncers (Myelin).
SEND_CLIENTS=20; SEND_SECONDS=20
FAN_SYNCERS=20; FAN_MESSAGES=200; FAN_RATE=20
INIT_ROOMS=50; INIT_MESSAGES=100; INIT_REPEATS=10
JOIN_USERS=100
SCALE_SYNCERS=1000; SCALE_MESSAGES=100; SCALE_RATE=10
# Big rooms (each run on a fresh Myelin): one room of BIG_MEMBERS long-polling members at
# 1 msg/s (then BIG_LATE more join the full room at once) and at 10 msg/s, one room of
# HUGE_MEMBERS at 1 msg/s; the scale curve runs CURVE_MESSAGES at 1 msg/s for each size in
# SCALE_POINTS (Synapse too, until a size does not finish within CURVE_TIMEOUT seconds).
BIG_MEMBERS=3000; HUGE_MEMBERS=10000; BIG_LATE=1000
BIG_SLOW_MESSAGES=60; BIG_FAST_MESSAGES=300
SCALE_POINTS="100 300 1000 3000 10000"; CURVE_MESSAGES=30; CURVE_TIMEOUT=300
# Synapse is given this long for the 1,000-syncer scale run (it has not finished one yet).
SYNAPSE_SCALE_TIMEOUT=300
if [ "$quick" = 1 ]; then
    BIG_MEMBERS=60; HUGE_MEMBERS=120; BIG_LATE=20
    BIG_SLOW_MESSAGES=5; BIG_FAST_MESSAGES=20
    SCALE_POINTS="20 50"; CURVE_MESSAGES=5; CURVE_TIMEOUT=120
fi
if [ "$quick" = 1 ]; then
    SEND_CLIENTS=5; SEND_SECONDS=3
    FAN_SYNCERS=5; FAN_MESSAGES=20; FAN_RATE=20
    INIT_ROOMS=5; INIT_MESSAGES=10; INIT_REPEATS=3
    JOIN_USERS=10
    SCALE_SYNCERS=50; SCALE_MESSAGES=20; SCALE_RATE=10
fi

rm -rf "$work"
mkdir -p "$work"
# 10,000 long polls need as many sockets on both sides.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ "$db" = postgres ] && [ -d "$work/pg" ]; then
        pg_ctl -D "$work/pg" stop -m fast >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_up() {
    for _ in $(seq 1 300); do
        if curl -fsS "$1/_matrix/client/versions" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "server at $1 did not come up" >&2
    return 1
}

# ---- build ----
echo "building Myelin and myelin-load (release)..." >&2
# One cargo invocation: two would resolve features differently and rebuild shared crates.
cargo build --release -p myelin --bin myelin -p spec-tests --bin myelin-load >&2
load="$root/target/release/myelin-load"

# ---- Synapse ----
venv="$bench/.venv"
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
if ! "$venv/bin/python" -c "import synapse, sys; sys.exit(0 if synapse.__version__ == '$SYNAPSE_VERSION' else 1)" 2>/dev/null; then
    echo "installing Synapse $SYNAPSE_VERSION..." >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION" >&2
    if [ "$db" = postgres ]; then "$venv/bin/pip" install --quiet psycopg2-binary >&2; fi
fi
if [ "$db" = postgres ] && ! "$venv/bin/python" -c 'import psycopg2' 2>/dev/null; then
    "$venv/bin/pip" install --quiet psycopg2-binary >&2
fi

syn_port=$(free_port)
syn_dir="$work/synapse"
mkdir -p "$syn_dir"
"$venv/bin/python" -m synapse.app.homeserver --server-name localhost --config-path "$syn_dir/homeserver.yaml" \
    --data-directory "$syn_dir" --generate-config --report-stats=no >/dev/null
if [ "$db" = postgres ]; then
    pg_port=$(free_port)
    initdb -D "$work/pg" -U synapse --auth=trust >/dev/null
    pg_ctl -D "$work/pg" -o "-p $pg_port -k $work -h 127.0.0.1" -l "$work/pg.log" start >/dev/null
    for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p "$pg_port" >/dev/null 2>&1 && break; sleep 0.2; done
    createdb -h 127.0.0.1 -p "$pg_port" -U synapse -E UTF8 --lc-collate=C --lc-ctype=C -T template0 synapse
    db_yaml="database:
  name: psycopg2
  args: {user: synapse, database: synapse, host: 127.0.0.1, port: $pg_port, cp_min: 5, cp_max: 10}"
else
    db_yaml="database:
  name: sqlite3
  args: {database: $syn_dir/homeserver.db}"
fi
python3 - "$syn_dir/homeserver.yaml" "$syn_port" "$db_yaml" <<'EOF'
import re, sys
path, port, db = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path).read()
# Loopback listener on our port, no TLS, client API only.
text = re.sub(r"listeners:.*?(?=\n\S)", f"""listeners:
  - port: {port}
    tls: false
    type: http
    x_forwarded: false
    bind_addresses: ['127.0.0.1']
    resources:
      - names: [client]
        compress: false""", text, flags=re.S)
text = re.sub(r"database:.*?(?=\n\S)", db, text, flags=re.S)
big = "{per_second: 100000, burst_count: 100000}"
text += f"""
enable_registration: true
enable_registration_without_verification: true
suppress_key_server_warning: true
trusted_key_servers: []
presence:
  enabled: true
rc_message: {big}
rc_registration: {big}
rc_login:
  address: {big}
  account: {big}
  failed_attempts: {big}
rc_joins:
  local: {big}
  remote: {big}
rc_joins_per_room: {big}
rc_invites:
  per_room: {big}
  per_user: {big}
  per_sender: {big}
rc_3pid_validation: {big}
rc_presence:
  per_user: {big}
rc_delayed_event_mgmt: {big}
rc_room_creation: {big}
rc_reports: {big}
"""
open(path, "w").write(text)
EOF
# Synapse's generated log config writes homeserver.log relative to the working directory.
(cd "$syn_dir" && exec "$venv/bin/python" -m synapse.app.homeserver --config-path "$syn_dir/homeserver.yaml") >"$work/synapse.log" 2>&1 &
syn_pid=$!
pids+=("$syn_pid")
synapse_url="http://127.0.0.1:$syn_port"

# ---- Myelin ----
# start_myelin NAME: a Myelin on a fresh data dir and port; sets started_pid, started_url.
start_myelin() {
    local port
    port=$(free_port)
    # The load comes from one address: rate limits off, as they are for Synapse above.
    MYELIN_LISTEN="127.0.0.1:$port" MYELIN_DATA_DIR="$work/$1" MYELIN_REGISTRATION_MODE=open \
        MYELIN_RATE_LIMITS_ENABLED=false MYELIN_LIMITS_MAX_CONNECTIONS=30000 \
        RUST_LOG=warn "$root/target/release/myelin" serve >"$work/$1.log" 2>&1 &
    started_pid=$!
    pids+=("$started_pid")
    started_url="http://127.0.0.1:$port"
}
start_myelin myelin
my_pid=$started_pid
myelin_url=$started_url

wait_up "$synapse_url"
wait_up "$myelin_url"
sleep 2
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
syn_idle=$(rss_kib "$syn_pid"); my_idle=$(rss_kib "$my_pid")

run() { # name url pid args...
    local name=$1 url=$2 pid=$3; shift 3
    echo "== $name against $url" >&2
    "$load" --url "$url" --server-pid "$pid" --prefix "$name" "$@" >"$work/$name.json"
}
for target in synapse myelin; do
    if [ $target = synapse ]; then url=$synapse_url; pid=$syn_pid; else url=$myelin_url; pid=$my_pid; fi
    run "$target-send" "$url" "$pid" send --clients "$SEND_CLIENTS" --seconds "$SEND_SECONDS"
    run "$target-fanout" "$url" "$pid" fanout --syncers "$FAN_SYNCERS" --messages "$FAN_MESSAGES" --rate "$FAN_RATE"
    run "$target-initial" "$url" "$pid" initial-sync --rooms "$INIT_ROOMS" --messages "$INIT_MESSAGES" --repeats "$INIT_REPEATS"
    run "$target-join" "$url" "$pid" join-storm --users "$JOIN_USERS"
done
run myelin-scale "$myelin_url" "$my_pid" fanout --syncers "$SCALE_SYNCERS" --messages "$SCALE_MESSAGES" --rate "$SCALE_RATE"
syn_after=$(rss_kib "$syn_pid"); my_after=$(rss_kib "$my_pid")
# Synapse is not expected to hold the scale run; it gets a time limit and we report what
# it did (or that it did not finish).
if ! timeout "$SYNAPSE_SCALE_TIMEOUT" "$load" --url "$synapse_url" --server-pid "$syn_pid" --prefix synapse-scale \
    fanout --syncers "$SCALE_SYNCERS" --messages "$SCALE_MESSAGES" --rate "$SCALE_RATE" >"$work/synapse-scale.json"; then
    echo '{"failed": true}' >"$work/synapse-scale.json"
fi
syn_peak=$(awk '/VmHWM/ {print $2}' "/proc/$syn_pid/status"); my_peak=$(awk '/VmHWM/ {print $2}' "/proc/$my_pid/status")
kill "$my_pid" 2>/dev/null || true

# ---- Big rooms and the scale curve: every Myelin run from a fresh server ----
# Synapse may still be working off a run it did not finish in time: it is paused during
# every Myelin-only run, so the two never share the cores.
fresh() { # name args...: one load run against a fresh Myelin (its peak RSS is the run's)
    local name=$1; shift
    kill -STOP "$syn_pid" 2>/dev/null || true
    start_myelin "$name-data"
    wait_up "$started_url"
    run "$name" "$started_url" "$started_pid" "$@"
    kill "$started_pid" 2>/dev/null || true
    wait "$started_pid" 2>/dev/null || true
    kill -CONT "$syn_pid" 2>/dev/null || true
}
fresh myelin-big1 fanout --syncers "$BIG_MEMBERS" --messages "$BIG_SLOW_MESSAGES" --rate 1 --late-joiners "$BIG_LATE"
fresh myelin-big10 fanout --syncers "$BIG_MEMBERS" --messages "$BIG_FAST_MESSAGES" --rate 10
fresh myelin-huge fanout --syncers "$HUGE_MEMBERS" --messages "$BIG_SLOW_MESSAGES" --rate 1
synapse_curve=1
for n in $SCALE_POINTS; do
    fresh "myelin-curve-$n" fanout --syncers "$n" --messages "$CURVE_MESSAGES" --rate 1
    if [ "$synapse_curve" = 1 ]; then
        # Synapse keeps its one instance (a fresh one per size would add its start-up and
        # registration of every user again); it stops at the first size it cannot finish.
        if ! timeout "$CURVE_TIMEOUT" "$load" --url "$synapse_url" --server-pid "$syn_pid" --prefix "synapse-curve-$n" \
            fanout --syncers "$n" --messages "$CURVE_MESSAGES" --rate 1 >"$work/synapse-curve-$n.json"; then
            echo '{"failed": true}' >"$work/synapse-curve-$n.json"
            synapse_curve=0
            # Out of the curve: stop it, so its backlog does not run beside Myelin's sizes.
            kill "$syn_pid" 2>/dev/null || true
            wait "$syn_pid" 2>/dev/null || true
        fi
    fi
done

# The scale curve as an SVG (matplotlib, from PyPI, in the benchmark's own venv).
if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'matplotlib==3.11.2' >&2
fi
"$venv/bin/python" "$bench/scale_chart.py" "$work" "$bench/scale.svg" $SCALE_POINTS

SYNAPSE_SCALE_TIMEOUT=$SYNAPSE_SCALE_TIMEOUT python3 - "$work" "$bench/RESULTS.md" "$db" "$SYNAPSE_VERSION" "$syn_idle" "$my_idle" "$syn_after" "$my_after" "$syn_peak" "$my_peak" \
    "send $SEND_CLIENTS clients x ${SEND_SECONDS}s; fanout $FAN_SYNCERS syncers, $FAN_MESSAGES msgs at $FAN_RATE/s; initial sync $INIT_ROOMS rooms x $INIT_MESSAGES msgs ($INIT_REPEATS repeats); join storm $JOIN_USERS users; scale $SCALE_SYNCERS syncers, $SCALE_MESSAGES msgs at $SCALE_RATE/s" "$SCALE_POINTS" <<'EOF'
import json, os, platform, subprocess, sys, datetime
work, out, db, syn_version = sys.argv[1:5]
syn_idle, my_idle, syn_after, my_after, syn_peak, my_peak = (int(x) / 1024 for x in sys.argv[5:11])
params = sys.argv[11]
curve_sizes = [int(n) for n in sys.argv[12].split()]
r = lambda name: json.load(open(os.path.join(work, name + ".json")))
S = {k: r("synapse-" + k) for k in ["send", "fanout", "initial", "join"]}
M = {k: r("myelin-" + k) for k in ["send", "fanout", "initial", "join"]}
scale = r("myelin-scale")
syn_scale = r("synapse-scale")
rows = []
def row(scenario, metric, s, m, better):
    if better == "n/a" or s in (None, 0) or m in (None, 0):
        ratio = "n/a"
    elif better == "higher":
        ratio = f"{m / s:.1f}x"
    else:
        ratio = f"{s / m:.1f}x"
    rows.append(f"| {scenario} | {metric} | {s} | {m} | {ratio} |")
row("send", "messages/s", S["send"]["messages_per_sec"], M["send"]["messages_per_sec"], "higher")
row("send", "latency p50 ms", S["send"]["latency"]["p50_ms"], M["send"]["latency"]["p50_ms"], "lower")
row("send", "latency p99 ms", S["send"]["latency"]["p99_ms"], M["send"]["latency"]["p99_ms"], "lower")
row("fanout", "delivery p50 ms", S["fanout"]["delivery_latency"]["p50_ms"], M["fanout"]["delivery_latency"]["p50_ms"], "lower")
row("fanout", "delivery p99 ms", S["fanout"]["delivery_latency"]["p99_ms"], M["fanout"]["delivery_latency"]["p99_ms"], "lower")
row("fanout", "lost / duplicated", f'{S["fanout"]["lost"]} / {S["fanout"]["duplicated"]}', f'{M["fanout"]["lost"]} / {M["fanout"]["duplicated"]}', "n/a")
row("initial-sync", "p50 ms", S["initial"]["initial_sync"]["p50_ms"], M["initial"]["initial_sync"]["p50_ms"], "lower")
row("initial-sync", "p99 ms", S["initial"]["initial_sync"]["p99_ms"], M["initial"]["initial_sync"]["p99_ms"], "lower")
row("join-storm", "joins/s", S["join"]["joins_per_sec"], M["join"]["joins_per_sec"], "higher")
row("join-storm", "/members ms", S["join"]["members_ms"], M["join"]["members_ms"], "lower")
row("memory", "idle RSS MiB", round(syn_idle, 1), round(my_idle, 1), "lower")
row("memory", "RSS after the run MiB", round(syn_after, 1), round(my_after, 1), "lower")
row("memory", "peak RSS MiB", round(syn_peak, 1), round(my_peak, 1), "lower")
mem = subprocess.run(["free", "-m"], capture_output=True, text=True).stdout.splitlines()[1].split()[1]
lines = [
    "# Myelin vs Synapse on one machine",
    "",
    f"Generated by `spec-tests/bench/compare.sh` on {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC.",
    "",
    f"- Machine: {os.cpu_count()} cores, {mem} MiB memory, {platform.platform()}",
    f"- Synapse {syn_version} ({db}), Myelin {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()} (release build)",
    f"- Parameters: {params}",
    "- Ratio: how many times better Myelin is (higher throughput or lower time).",
    "",
    "| scenario | metric | Synapse | Myelin | ratio |",
    "|---|---|---|---|---|",
    *rows,
    "",
    "## At scale",
    "",
    f"{scale['syncers']} concurrent long-polling syncers, {scale['messages']} messages at {scale['rate_per_sec']}/s:",
    "",
    f"- Myelin: delivery p50 {scale['delivery_latency']['p50_ms']} ms, p99 {scale['delivery_latency']['p99_ms']} ms, "
    f"lost {scale['lost']}, duplicated {scale['duplicated']}.",
    (f"- Synapse: delivery p50 {syn_scale['delivery_latency']['p50_ms']} ms, p99 {syn_scale['delivery_latency']['p99_ms']} ms, "
     f"lost {syn_scale['lost']}, duplicated {syn_scale['duplicated']}."
     if not syn_scale.get("failed")
     else f"- Synapse: did not complete the run within {int(os.environ['SYNAPSE_SCALE_TIMEOUT']) // 60} minutes."),
    "",
]
big = {k: r("myelin-" + k) for k in ["big1", "big10", "huge"]}
def verdict(ok):
    return "met" if ok else "missed"
b1, b10, hg = big["big1"], big["big10"], big["huge"]
peak = lambda v: v["server_memory"]["after"]["peak_rss_mib"]
lines += [
    "## Big rooms",
    "",
    "One room, every member long-polling `/sync`, one sender; each run on a fresh Myelin.",
    "",
    "| run | send p50 ms | delivery p50 ms | delivery p99 ms | lost / duplicated | peak RSS MiB |",
    "|---|---|---|---|---|---|",
]
for v in (b1, b10, hg):
    lines.append(f"| {v['syncers']} members, {v['messages']} msgs at {v['rate_per_sec']}/s | {v['send_latency']['p50_ms']} | "
                 f"{v['delivery_latency']['p50_ms']} | {v['delivery_latency']['p99_ms']} | {v['lost']} / {v['duplicated']} | {peak(v)} |")
lines += [
    "",
    f"Joins into the {b1['syncers']}-member room afterwards ({b1['late_joiners']} users at once): {b1['late_joins_per_sec']} joins/s.",
    "",
    "| target (issue #10) | this run | verdict |",
    "|---|---|---|",
    f"| send into a {b1['syncers']}-member room p50 < 20 ms | {b1['send_latency']['p50_ms']} ms | {verdict(b1['send_latency']['p50_ms'] < 20)} |",
    f"| {b1['syncers']} syncers at 1 msg/s: delivery p99 < 100 ms | {b1['delivery_latency']['p99_ms']} ms | {verdict(b1['delivery_latency']['p99_ms'] < 100)} |",
    f"| {hg['syncers']} syncers at 1 msg/s: delivery p99 < 250 ms, RSS < 500 MiB | {hg['delivery_latency']['p99_ms']} ms, {peak(hg)} MiB | "
    f"{verdict(hg['delivery_latency']['p99_ms'] < 250 and peak(hg) < 500)} |",
    f"| {b10['syncers']} syncers at 10 msg/s: 0 lost, p99 < 1 s | {b10['lost']} lost, {b10['delivery_latency']['p99_ms']} ms | "
    f"{verdict(b10['lost'] == 0 and b10['delivery_latency']['p99_ms'] < 1000)} |",
    f"| joins into a {b1['syncers']}-member room ≥ 1,000/s | {b1['late_joins_per_sec']}/s | {verdict((b1['late_joins_per_sec'] or 0) >= 1000)} |",
    "",
    "## Scale curve",
    "",
    "Members long-polling in one room, one message a second; Myelin from a fresh server at each size,",
    "Synapse on its one instance until a size does not finish in time.",
    "",
    "![scale curve](scale.svg)",
    "",
    "| members | Myelin delivery p50 / p99 ms | Myelin send p50 ms | Myelin peak RSS MiB | Synapse delivery p50 / p99 ms | Synapse send p50 ms |",
    "|---|---|---|---|---|---|",
]
for n in curve_sizes:
    m = r(f"myelin-curve-{n}")
    sp = os.path.join(work, f"synapse-curve-{n}.json")
    sv = json.load(open(sp)) if os.path.exists(sp) else {"failed": None}
    if sv.get("failed"):
        syn = ("did not finish", "—")
    elif sv.get("failed", 0) is None:
        syn = ("not run", "—")
    else:
        syn = (f"{sv['delivery_latency']['p50_ms']} / {sv['delivery_latency']['p99_ms']}", sv["send_latency"]["p50_ms"])
    lines.append(f"| {n} | {m['delivery_latency']['p50_ms']} / {m['delivery_latency']['p99_ms']} | {m['send_latency']['p50_ms']} | "
                 f"{peak(m)} | {syn[0]} | {syn[1]} |")
lines += [
    "",
    "Raw JSON of every run is in `spec-tests/bench/run/` after a run.",
]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
