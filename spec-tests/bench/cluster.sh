#!/usr/bin/env bash
# Several processes on one PostgreSQL database (issue #19): the same myelin-load scenarios
# against sled, PostgreSQL with one process alone on it, PostgreSQL shared by one process,
# and PostgreSQL shared by two processes (each user's requests go to one of the two, by
# access token, as behind a load balancer with per-user affinity). Each configuration runs
# on a fresh server and a fresh database, in one PostgreSQL cluster started here (Debian's
# packages, default settings, a temporary directory, a free loopback port). CPU is user +
# system time of the Myelin processes and of every PostgreSQL process during each scenario.
# Prints a Markdown table on stdout; the JSON of every run stays in spec-tests/bench/run.
#
#   spec-tests/bench/cluster.sh [--quick]
#
# CLUSTER_CONFIGS="pg-shared pg-shared-2" runs only those configurations (keeping the
# others' JSON from an earlier run) before the table is printed.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
work="$root/spec-tests/bench/run/cluster"
quick=0
[ "${1:-}" = --quick ] && quick=1
SEND_CLIENTS=20; SEND_SECONDS=20
FAN_SYNCERS=20; FAN_MESSAGES=200; FAN_RATE=20
WIDE_SYNCERS=1000; WIDE_MESSAGES=30; WIDE_RATE=1
if [ "$quick" = 1 ]; then
    SEND_CLIENTS=5; SEND_SECONDS=3
    FAN_SYNCERS=5; FAN_MESSAGES=20
    WIDE_SYNCERS=50; WIDE_MESSAGES=5
fi

all_configs="sled pg pg-shared pg-shared-2"
if [ -z "${CLUSTER_CONFIGS:-}" ]; then rm -rf "$work"; fi
mkdir -p "$work"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
pids=()
pg_bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/myelin-bench-pg.XXXXXX")
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown postgres "$pg_dir"
    as_pg=(runuser -u postgres --)
fi
stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
}
trap stop_all EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_port=$(free_port)
"${as_pg[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U myelin --auth=trust -E UTF8 >"$work/initdb.log"
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w \
    -o "-p $pg_port -k $pg_dir -h 127.0.0.1 -c max_connections=400" start >/dev/null
postmaster=$(head -1 "$pg_dir/data/postmaster.pid")
pg_version=$("$pg_bin/postgres" --version)

echo "building Myelin and myelin-load (release)..." >&2
cargo build --release -p myelin --bin myelin -p spec-tests --bin myelin-load >&2
load="$root/target/release/myelin-load"

wait_up() {
    for _ in $(seq 1 300); do
        if curl -fsS "$1/_matrix/client/versions" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "server at $1 did not come up" >&2
    return 1
}

# CPU seconds (user + system) of processes: for the postmaster, with its reaped children.
cpu_of() {
    python3 - "$@" <<'EOF'
import os, sys
tick = os.sysconf("SC_CLK_TCK")
total = 0
for pid in sys.argv[1:]:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    # utime, stime, cutime, cstime are fields 14-17 (the list starts at field 3).
    total += sum(int(x) for x in fields[11:15])
print(total / tick)
EOF
}
pg_pids() { echo "$postmaster" $(pgrep -P "$postmaster" || true); }

# configure NAME ENGINE SHARED PROCESSES: fresh data dir (and database), servers started;
# sets urls and server_pids.
configure() {
    local name=$1 engine=$2 shared=$3 n=$4 db="bench_${1//-/_}"
    local env=(MYELIN_DATA_DIR="$work/$name-data" MYELIN_REGISTRATION_MODE=open
        MYELIN_RATE_LIMITS_ENABLED=false MYELIN_LIMITS_MAX_CONNECTIONS=30000 RUST_LOG=warn
        MYELIN_RTC_EMBEDDED_SFU=false)
    if [ "$engine" = postgres ]; then
        "${as_pg[@]}" "$pg_bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U myelin -d postgres \
            -c "CREATE DATABASE $db" >/dev/null
        env+=(MYELIN_STORAGE_ENGINE=postgres
            MYELIN_STORAGE_POSTGRES_URL="host=127.0.0.1 port=$pg_port user=myelin dbname=$db"
            MYELIN_STORAGE_POSTGRES_SHARED="$shared")
    fi
    urls=""
    server_pids=()
    for i in $(seq 1 "$n"); do
        local port
        port=$(free_port)
        env MYELIN_LISTEN="127.0.0.1:$port" "${env[@]}" "$root/target/release/myelin" serve \
            >"$work/$name-$i.log" 2>&1 &
        pids+=("$!")
        server_pids+=("$!")
        wait_up "http://127.0.0.1:$port"
        urls="${urls:+$urls,}http://127.0.0.1:$port"
    done
    sleep 2
}

# run NAME SCENARIO ARGS...: the scenario against the configured servers; its JSON gains
# the CPU seconds of Myelin and PostgreSQL spent during it.
run() {
    local name=$1; shift
    echo "== $name" >&2
    local my0 pg0 my1 pg1
    my0=$(cpu_of "${server_pids[@]}"); pg0=$(cpu_of $(pg_pids))
    "$load" --url "$urls" --prefix "$name" "$@" >"$work/$name.raw"
    my1=$(cpu_of "${server_pids[@]}"); pg1=$(cpu_of $(pg_pids))
    python3 - "$work/$name.raw" "$work/$name.json" "$my0" "$my1" "$pg0" "$pg1" <<'EOF'
import json, sys
raw, out, my0, my1, pg0, pg1 = sys.argv[1:]
r = json.load(open(raw))
r["cpu_seconds"] = {"myelin": float(my1) - float(my0), "postgres": float(pg1) - float(pg0)}
json.dump(r, open(out, "w"))
EOF
}

stop_servers() {
    for p in "${server_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${server_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}

configs="sled:sled:false:1 pg:postgres:false:1 pg-shared:postgres:true:1 pg-shared-2:postgres:true:2"
for c in $configs; do
    IFS=: read -r name engine shared n <<<"$c"
    case " ${CLUSTER_CONFIGS:-$all_configs} " in *" $name "*) ;; *) continue ;; esac
    rm -f "$work/$name"-*
    configure "$name" "$engine" "$shared" "$n"
    run "$name-send" send --clients "$SEND_CLIENTS" --seconds "$SEND_SECONDS"
    run "$name-send-rooms" send --clients "$SEND_CLIENTS" --seconds "$SEND_SECONDS" --rooms "$SEND_CLIENTS"
    run "$name-fanout" fanout --syncers "$FAN_SYNCERS" --messages "$FAN_MESSAGES" --rate "$FAN_RATE"
    run "$name-wide" fanout --syncers "$WIDE_SYNCERS" --messages "$WIDE_MESSAGES" --rate "$WIDE_RATE"
    stop_servers
done

python3 - "$work" "$pg_version" "$(git rev-parse --short HEAD)" <<'EOF'
import json, sys
work, pg_version, commit = sys.argv[1:]
names = [("sled", "sled"), ("pg", "PostgreSQL, alone"), ("pg-shared", "PostgreSQL shared, 1 process"),
         ("pg-shared-2", "PostgreSQL shared, 2 processes")]
r = {n: {s: json.load(open(f"{work}/{n}-{s}.json")) for s in ["send", "send-rooms", "fanout", "wide"]} for n, _ in names}
def row(label, f):
    print(f"| {label} | " + " | ".join(f(r[n]) for n, _ in names) + " |")
def lat(d):
    return f"{d['p50_ms']} / {d['p99_ms']}"
def cpu(run, per):
    c = run["cpu_seconds"]
    return f"{1000 * c['myelin'] / per:.2f} + {1000 * c['postgres'] / per:.2f}"
print(f"Commit {commit}, {pg_version}.\n")
print("| scenario | " + " | ".join(l for _, l in names) + " |")
print("|---|" + "---|" * len(names))
for key, label in [("send", "one room"), ("send-rooms", "a room each")]:
    row(f"send, 20 clients × 20 s, {label}: msg/s", lambda x: f"{x[key]['messages_per_sec']:,}")
    row("  latency p50 / p99 ms", lambda x: lat(x[key]["latency"]))
    row("  CPU ms per message, Myelin + PostgreSQL", lambda x: cpu(x[key], x[key]["messages"]))
    row("  errors", lambda x: str(x[key]["errors"]))
for key, label in [("fanout", "fanout, 20 syncers, 200 msgs at 20/s"), ("wide", "1,000 syncers, 30 msgs at 1/s")]:
    row(f"{label}: delivery p50 / p99 ms", lambda x: lat(x[key]["delivery_latency"]))
    row("  send p50 / p99 ms", lambda x: lat(x[key]["send_latency"]))
    row("  lost / duplicated", lambda x: f"{x[key]['lost']} / {x[key]['duplicated']}")
    row("  CPU ms per delivery, Myelin + PostgreSQL", lambda x: cpu(x[key], max(1, x[key]["deliveries"])))
EOF
