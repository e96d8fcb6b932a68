# bench/lib.sh: what every measurement of bench/run shares, sourced by bench/run and by each
# measurement script (bench/ingest, bench/metrics-scrape, bench/accept, bench/memory,
# bench/delivery, bench/startup, bench/profile): the flags and BENCH_* defaults, the processes
# (recorded, stopped on any exit), the release build, the inputs and the wrk script, the private
# Redis and the two baselines, the gateway, the loop over the stores and the results table.
#
# A measurement script defines <name>_measure KEY (run once per store, on the gateway bench_main
# starts on it) or <name>_run (run once, after the stores), and <name>_rows (its part of the
# table). Run by itself, it goes through bench_alone; bench/run sources them all.

bench_lib_loaded=1
bench=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$bench")
# The script that was run: bench/run writes latest.md and logs/; a measurement run alone writes
# <name>.md and logs-<name>/, so it never replaces the last full run's table.
bench_name=$(basename "$0")

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

bench_args() { # the flags of bench/run, then the defaults they and BENCH_* leave open
  quick=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --quick) quick=1 ;;
      --duration) BENCH_DURATION=$2; shift ;;
      --connections) BENCH_CONNECTIONS=$2; shift ;;
      --stores) BENCH_STORES=$2; shift ;;
      --profile) BENCH_PROFILE=$2; shift ;;
      --paths) BENCH_PATHS=$2; shift ;;
      -h|--help) usage; exit 0 ;;
      *) echo "bench/$bench_name: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
  done

  # Quick mode (CI): the same measurements with seconds per point and smaller counts, so the
  # whole run stays well under two minutes once built. Its figures are a smoke test, not data.
  if [ "$quick" = 1 ]; then
    d_duration=3 d_rounds=1 d_warmup=1 d_large_req=5 d_delivery=50 d_memory=500 d_startup=3 d_profile=off
    d_max=900 d_hostile_secs=6 d_hostile_clients=2 d_month_runs=3 d_month_loans=5000
  else
    d_duration=15 d_rounds=3 d_warmup=2 d_large_req=20 d_delivery=500 d_memory=5000 d_startup=10 d_profile=auto
    d_max=3600 d_hostile_secs=30 d_hostile_clients=8 d_month_runs=7 d_month_loans=50000
  fi
  duration=${BENCH_DURATION:-$d_duration}
  rounds=${BENCH_ROUNDS:-$d_rounds}
  warmup=${BENCH_WARMUP:-$d_warmup}
  connections=${BENCH_CONNECTIONS:-64}
  wrk_threads=${BENCH_WRK_THREADS:-2}
  stores=${BENCH_STORES:-redis embedded}
  profile_mode=${BENCH_PROFILE:-$d_profile}
  profile_secs=${BENCH_PROFILE_SECS:-20}
  large_n=${BENCH_LARGE_REPAYMENTS:-10000}
  large_requests=${BENCH_LARGE_REQUESTS:-$d_large_req}
  delivery_reports=${BENCH_DELIVERY_REPORTS:-$d_delivery}
  delivery_concurrency=${BENCH_DELIVERY_CONCURRENCY:-4}
  latency_ms=${BENCH_LATENCY_MS:-200}
  memory_reports=${BENCH_MEMORY_REPORTS:-$d_memory}
  startup_runs=${BENCH_STARTUP_RUNS:-$d_startup}
  max_secs=${BENCH_MAX_SECS:-$d_max}
  paths=${BENCH_PATHS:-hostile month}
  hostile_secs=${BENCH_HOSTILE_SECS:-$d_hostile_secs}
  hostile_clients=${BENCH_HOSTILE_CLIENTS:-$d_hostile_clients}
  month_runs=${BENCH_MONTH_RUNS:-$d_month_runs}
  month_loans=${BENCH_MONTH_LOANS:-$d_month_loans}
  ingest_month=${BENCH_INGEST_MONTH:-50000}
  batch_size=200 # the gateway's default kiva.batch_size; the delivery bound is computed with it
}

say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

stop_pid() { # pid: SIGTERM, up to 15 s to exit (graceful shutdowns), then SIGKILL
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local kept=() p
  for p in "${pids[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
  pids=("${kept[@]}")
}

cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
  exit "$status"
}

start_bg() { # log command...: starts a process in the background; its pid in $last_pid
  local log=$1
  shift
  "$@" >"$log" 2>&1 &
  last_pid=$!
  pids+=("$last_pid")
}

free_port() { # a port free on 127.0.0.1 now (the kernel picks it)
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_ready() { # url pid timeout_secs: true once url answers 2xx; false if pid exits or time runs out
  local url=$1 pid=$2 deadline=$((SECONDS + $3))
  while [ $SECONDS -lt "$deadline" ]; do
    curl -sf -o /dev/null --max-time 2 "$url" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# CPU time a process (all its threads) has used, in clock ticks: utime + stime.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk_tck=$(getconf CLK_TCK)

mem_kb() { # pid field (VmRSS|VmHWM)
  awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"
}

now() { echo "$EPOCHREALTIME"; }
calc() { awk "BEGIN { printf \"%.4f\", $* }"; }
median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
fail() { broken+=("$*"); say "BROKEN: $*"; }
ratio() { # a b: a/b, or nan
  awk -v a="${1:-nan}" -v b="${2:-nan}" 'BEGIN { if (a == "nan" || b == "nan" || a == "" || b == "" || b + 0 == 0) print "nan"; else printf "%.3f", a / b }'
}


apt_install() { # packages...: Debian packages, with sudo when not root
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  say "installing: $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

bench_setup() { # flags...: everything a measurement needs, in the order bench/run has always done it
  bench_args "$@"
  results=$bench/results
  if [ "$bench_name" = run ]; then logs=$results/logs; else logs=$results/logs-$bench_name; fi
  mkdir -p "$results"
  rm -rf "$logs"
  mkdir -p "$logs"

  # --- processes: everything started here is recorded, and stopped on any exit -------------
  # Sockets, the Redis data and embedded stores live in a private temporary directory: unix
  # socket paths are limited to ~100 bytes, which a deep checkout could exceed.
  work=$(mktemp -d /tmp/rg-bench.XXXXXX)
  pids=()
  broken=()

  trap cleanup EXIT
  # A signal must go through the EXIT trap so that nothing is left running.
  trap 'exit 130' INT
  trap 'exit 143' TERM

  local missing=()
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

  # --- build -----------------------------------------------------------------------------------
  # Both projects share one target directory, so the baselines reuse the gateway's compiled
  # dependencies (bench/baseline/Cargo.lock pins the same releases).
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
  say "building (release)"
  (cd "$root" && cargo build --release --locked)
  # Not --locked: the baseline depends on the main crate by path, so its lock must follow the
  # main crate's dependencies; cargo updates it minimally when they change.
  (cd "$bench/baseline" && cargo build --release)
  gw=$CARGO_TARGET_DIR/release/repayment-gateway
  baseline=$CARGO_TARGET_DIR/release/baseline
  sandbox_bin=$CARGO_TARGET_DIR/release/sandbox_with_latency

  # Bounded in time from here on: a watchdog ends the run (through the EXIT trap) if it hangs.
  (
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "$max_secs" &
    sleeper=$!
    wait "$sleeper"
    echo "bench/$bench_name: time limit of ${max_secs}s reached; stopping" >&2
    kill -TERM $$
  ) &
  pids+=("$!")
  run_started=$SECONDS

  make_inputs
  start_redis
  # The baselines: an HTTP-only actix-web server, and a store limit (one Redis MULTI/EXEC).
  start_baseline http || { fail "HTTP baseline did not start"; exit 1; }
  http_pid=$bl_pid http_url=$bl_url
  start_baseline store || { fail "store baseline did not start"; exit 1; }
  store_pid=$bl_pid store_url=$bl_url
  R[baseline.rss_idle]=$(mem_kb "$store_pid" VmRSS)
}

# --- inputs ----------------------------------------------------------------------------------
make_body() { # repayments file [unique]: a valid report for three-column partner 102
  # Without `unique`: the same report, posted again and again (delivery, memory, the large
  # report), so it says `correction`; otherwise the second copy would be refused (one report
  # per loan and period). With it: a template for the ingest points, whose loan ids carry
  # `{{u}}`, which post.lua replaces with a value unique to each request. Ingest then measures
  # what production does, new loans in each report (the loan check finds nothing, the period's
  # loan index grows), rather than one correction rewriting the same loans: on those the
  # index stays small, and Redis keeps a hash under 512 fields as a listpack, where writing
  # each field scans the others. Its period is `{{p}}`: post.lua moves to the next month once
  # a month holds $ingest_month loans (see there).
  awk -v n="$1" -v unique="${3:-}" 'BEGIN {
    tag = (unique == "" ? "" : "{{u}}-")
    printf "{\"period\":\"%s\",\"correction\":%s,\"repayments\":[", (unique == "" ? "2026-10" : "{{p}}"), (unique == "" ? "true" : "false")
    for (i = 1; i <= n; i++)
      printf "%s{\"loan_id\":\"L-%s%07d\",\"client_id\":\"C-%07d\",\"amount\":\"%d.%02d\"}",
        (i > 1 ? "," : ""), tag, i, i, 10 + i % 90, i % 100
    printf "]}"
  }' >"$2"
}
sha() { printf %s "$1" | sha256sum | cut -d' ' -f1; }

make_inputs() { # the bodies, the API keys and the wrk script, in $work
  # One batch as the worker sends it to Kiva (amounts as JSON numbers), for the delivery bound.
  awk -v n="$batch_size" 'BEGIN {
    printf "{\"repayments\":["
    for (i = 1; i <= n; i++)
      printf "%s{\"loan_id\":\"L-%07d\",\"client_id\":\"C-%07d\",\"amount\":%d.%02d}",
        (i > 1 ? "," : ""), i, i, 10 + i % 90, i % 100
    printf "]}"
  }' >"$work/kiva-batch.json"
  make_body 1 "$work/body-1.json"
  make_body "$batch_size" "$work/body-200.json"
  make_body "$large_n" "$work/body-large.json"
  make_body 1 "$work/ingest-1.json" unique
  make_body "$batch_size" "$work/ingest-200.json" unique

  # Fresh keys each run; the configuration holds only their hashes, as in production.
  branch_key=$("$gw" new-api-key | awk '/^key:/ {print $2}')
  admin_key=$("$gw" new-api-key | awk '/^key:/ {print $2}')
  write_post_lua
  declare -gA R # results, keyed "<store>.<measure>"
  wrk_runs=0
}

write_config() { # file store_url port delivery_enabled kiva_base_url
  cat >"$1" <<TOML
# Written by bench/run. Defaults everywhere except: the pool sized for the load, like the
# store-limit baseline's; delivery on only for the delivery measurement.
[server]
bind = "127.0.0.1:$3"
[store]
url = "$2"
key_prefix = "bench"
pool_size = $connections
[kiva]
token_url = "$5/oauth/token"
audience = "https://partner-api.sandbox.local"
api_base_url = "$5"
[delivery]
enabled = $4
concurrency = $delivery_concurrency
# /metrics beside the API, as measured before metrics.bind defaulted to 127.0.0.1:9100 (and one
# port per gateway when several run).
[metrics]
bind = "server"
[[partners]]
id = "102"
name = "Sandbox partner 102"
column_format = "three_column"
client_id = "demo-three-column"
client_secret = "demo-secret-102"
[[api_keys]]
name = "bench-branch"
partner = "102"
branch = "Nairobi"
role = "branch"
key_sha256 = "$(sha "$branch_key")"
[[api_keys]]
name = "bench-admin"
partner = "102"
branch = "Head office"
role = "admin"
key_sha256 = "$(sha "$admin_key")"
TOML
}

# wrk posts one prepared body on every connection; the done hook prints one parseable line
# (exact percentiles rather than wrk's rounded text).
write_post_lua() {
cat >"$work/post.lua" <<'LUA'
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local function set(header, var)
  local value = os.getenv(var)
  if value and value ~= "" then wrk.headers[header] = value end
end
set("X-Api-Key", "BENCH_API_KEY")
set("Authorization", "BENCH_AUTHORIZATION")

-- A body with `{{u}}` gets a value unique to the request in its place: the run's sequence
-- number (BENCH_RUN, so a store that is not emptied between points never sees a loan twice),
-- the wrk thread and a counter. Cut once here, joined per request by table.concat.
--
-- Its `{{p}}` (the period, before the repayments) is a month that holds at most
-- BENCH_INGEST_MONTH loans, across the run's BENCH_THREADS threads; then the next month. A
-- month of a large partner has tens of thousands of repayments (the month path measures
-- 50,000); one month that grew by every loan of a run, millions, would make the period's loan
-- index a size no partner's month has, and its lookups the bench's cost.
local head, template = wrk.body:match("^(.-){{p}}(.*)$")
head, template = head or "", template or wrk.body
local pieces = {}
for piece in (template .. "{{u}}"):gmatch("(.-){{u}}") do pieces[#pieces + 1] = piece end
if #pieces > 1 then
  local threads = 0
  function setup(thread)
    threads = threads + 1
    thread:set("thread_no", threads)
  end
  local run = tonumber(os.getenv("BENCH_RUN") or "0")
  local per_month = math.max(1, math.floor(tonumber(os.getenv("BENCH_INGEST_MONTH") or "50000")
    / ((#pieces - 1) * tonumber(os.getenv("BENCH_THREADS") or "1"))))
  local counter = 0
  local prefix
  function request()
    prefix = prefix or tostring(run) .. "." .. tostring(thread_no) .. "."
    counter = counter + 1
    -- Runs start 600 months apart, so a warm-up's months are not the measured run's.
    local month = (run * 600 + math.floor((counter - 1) / per_month)) % 1200
    local period = string.format("%04d-%02d", 2000 + math.floor(month / 12), month % 12 + 1)
    return wrk.format(nil, nil, nil, head .. period .. table.concat(pieces, prefix .. counter))
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d mean_us=%.0f status_errors=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, e.status, e.connect + e.read + e.write + e.timeout))
end
LUA
}

wrk_run() { # log url body connections threads secs [authorization]: sets w_rps w_p50 w_p99 w_mean w_ok
  local log=$1 url=$2 body=$3 conns=$4 threads=$5 secs=$6 auth=${7:-} line
  w_ok=0 w_rps=nan w_p50=nan w_p99=nan w_mean=nan w_requests=0
  wrk_runs=$((wrk_runs + 1))
  BENCH_RUN=$wrk_runs BENCH_THREADS=$threads BENCH_INGEST_MONTH=$ingest_month \
    BENCH_BODY=$body BENCH_API_KEY=$branch_key BENCH_AUTHORIZATION=$auth \
    timeout $((secs + 60)) wrk -t"$threads" -c"$conns" -d"${secs}s" --timeout 10s --latency \
    -s "$work/post.lua" "$url" >"$log" 2>&1 || { say "wrk failed, see $log"; return 0; }
  line=$(grep '^BENCH ' "$log" | tail -1)
  [ -n "$line" ] || return 0
  local requests=0 duration_us=1 p50_us=0 p99_us=0 mean_us=0 status_errors=0 socket_errors=0 kv
  for kv in ${line#BENCH }; do local "${kv%%=*}=${kv#*=}"; done
  w_requests=$requests
  w_rps=$(calc "$requests / ($duration_us / 1e6)")
  w_p50=$(calc "$p50_us / 1000")
  w_p99=$(calc "$p99_us / 1000")
  w_mean=$(calc "$mean_us / 1000")
  # A point counts only if (nearly) every request got its 2xx: a fast 401 or 503 is no result.
  if [ "$requests" -gt 0 ] && [ $((status_errors + socket_errors)) -le $((requests / 100)) ]; then
    w_ok=1
  fi
}

ingest_point() { # key label url body server_pid: warm-up, then the measured run; results in R[key.*]
  local key=$1 label=$2 url=$3 body=$4 pid=$5 server0 redis0 server1 redis1
  reset_store
  wrk_run "$logs/wrk-$key-warmup.log" "$url" "$body" "$connections" "$wrk_threads" "$warmup"
  # CPU per request of the server and of Redis: on a shared 2-core machine, throughput moves
  # with the neighbours' load; the CPU each request costs much less.
  server0=$(cpu_ticks "$pid") redis0=$(cpu_ticks "$redis_pid")
  wrk_run "$logs/wrk-$key.log" "$url" "$body" "$connections" "$wrk_threads" "$duration"
  server1=$(cpu_ticks "$pid") redis1=$(cpu_ticks "$redis_pid")
  if [ "$w_ok" != 1 ]; then
    fail "$label: requests failed (see $logs/wrk-$key.log)"
    R[$key.rps]=nan R[$key.p50]=nan R[$key.p99]=nan
    return 0
  fi
  R[$key.rps]=$w_rps R[$key.p50]=$w_p50 R[$key.p99]=$w_p99
  R[$key.cpu_server]=$(calc "($server1 - $server0) * 1e6 / $clk_tck / $w_requests")
  R[$key.cpu_redis]=$(calc "($redis1 - $redis0) * 1e6 / $clk_tck / $w_requests")
  say "$label: $(printf '%.0f req/s, p50 %.2f ms, p99 %.2f ms, CPU/request %.0f µs + Redis %.0f µs' "$w_rps" "$w_p50" "$w_p99" "${R[$key.cpu_server]}" "${R[$key.cpu_redis]}")"
}

# --- Redis: private, on a unix socket, AOF on with fsync every second --------------------------
start_redis() {
  mkdir -p "$work/redis"
  redis_sock=$work/redis/redis.sock
  # RDB snapshots off: AOF is the durability the gateway asks for, and a snapshot fork in the
  # middle of a point would be noise. noeviction as in production.
  start_bg "$logs/redis.log" redis-server --port 0 --unixsocket "$redis_sock" --unixsocketperm 700 \
    --dir "$work/redis" --appendonly yes --appendfsync everysec --save "" \
    --maxmemory-policy noeviction
  redis_pid=$last_pid
  for _ in $(seq 1 100); do redis-cli -s "$redis_sock" ping >/dev/null 2>&1 && break; sleep 0.05; done
  redis-cli -s "$redis_sock" ping >/dev/null || { fail "redis-server did not start (see $logs/redis.log)"; exit 1; }
  redis_url="redis+unix://$redis_sock"
}

reset_store() {
  # Each point starts from an empty Redis with a compacted AOF, so what one point stored
  # (and AOF rewrites it would trigger) does not weigh on the next.
  redis-cli -s "$redis_sock" flushall >/dev/null
  redis-cli -s "$redis_sock" bgrewriteaof >/dev/null 2>&1 || true
  local i
  for i in $(seq 1 300); do
    redis-cli -s "$redis_sock" info persistence |
      grep -q 'aof_rewrite_in_progress:0' && break
    sleep 0.1
  done
  # An embedded store can't be emptied from outside the gateway: it accumulates (noted).
}

# --- the baselines ---------------------------------------------------------------------------
start_baseline() { # mode: sets bl_pid bl_url (waits until ready)
  local port
  port=$(free_port)
  start_bg "$logs/baseline-$1.log" "$baseline" --mode "$1" --bind "127.0.0.1:$port" \
    --redis "$redis_url" --pool "$connections"
  bl_pid=$last_pid bl_url="http://127.0.0.1:$port"
  wait_ready "$bl_url/health/ready" "$bl_pid" 15
}

# --- the gateway -------------------------------------------------------------------------------
start_gateway() { # config log [timeout] [wrapper...]: sets gw_pid gw_url; false if it did not get ready
  local config=$1 log=$2 timeout=${3:-20}
  shift 3 || shift $#
  local port
  port=$(sed -n 's/^bind = "127.0.0.1:\([0-9]*\)"$/\1/p' "$config")
  start_bg "$log" "$@" "$gw" serve --config "$config"
  gw_pid=$last_pid gw_url="http://127.0.0.1:$port"
  wait_ready "$gw_url/health/ready" "$gw_pid" "$timeout"
}

gateway_config() { # store_url [delivery_enabled] [kiva_url]: a config on a fresh port, path in $cfg
  cfg=$work/gateway-$RANDOM$RANDOM.toml
  write_config "$cfg" "$1" "$(free_port)" "${2:-false}" "${3:-http://127.0.0.1:1}"
}

submit_many() { # count body: posts count reports (8 at a time); false unless every one got 202
  local n=$1 body=$2 ok
  ok=$(timeout $((60 + n / 10)) curl -s --no-progress-meter -Z --parallel-max 8 -o /dev/null -w '%{http_code}\n' \
    --max-time 60 -X POST -H 'Content-Type: application/json' -H "X-Api-Key: $branch_key" \
    -H 'Expect:' --data-binary "@$body" "$gw_url/v1/repayments?n=[1-$n]" | grep -c '^202$' || true)
  [ "$ok" = "$n" ] || { say "submitted $n reports, $ok accepted"; return 1; }
}

store_url() { # phase: the store URL of the store being measured; a fresh one per phase
  # Redis is emptied between phases by reset_store; an embedded store can't be emptied from
  # outside the gateway, so each phase gets a new path.
  case "$store" in
    redis) echo "$redis_url" ;;
    embedded) echo "embedded:$work/embedded/$1" ;;
    *) echo "$store" ;; # any other store.url, measured as is
  esac
}

# --- the stores --------------------------------------------------------------------------------
# Each store's measurements share one gateway started on it, in the order given (ingest fills
# the store that GET /metrics then reads, and the large report is accepted on the same warm
# process); a measurement that needs processes of its own stops it first (stop_store_gateway).
measure_stores() { # measures...: <measure>_measure KEY for each store of --stores
  local reason m
  measured=()
  skipped=()
  for store in $stores; do
    mkdir -p "$work/embedded"
    key=$(tr -c 'a-zA-Z0-9\n' '_' <<<"$store")
    say "=== store: $store ($(store_url ingest))"
    reset_store
    gateway_config "$(store_url ingest)"
    if ! start_gateway "$cfg" "$logs/gateway-$key.log" 20; then
      # The error and the line after it: "configuration is invalid:" names the key below.
      reason=$(grep -m1 -A1 -i 'error' "$logs/gateway-$key.log" | tr -s ' \n' ' ' || true)
      stop_pid "$gw_pid"
      if [ "$store" = redis ]; then
        fail "the gateway did not start on Redis: $reason"
      else
        # A backend this binary does not know yet (embedded, before it lands) is skipped: not
        # a failure of the run.
        say "skipping store $store: the gateway did not start ($reason)"
        skipped+=("$store: ${reason:-did not start}")
      fi
      continue
    fi
    shared_gw_pid=$gw_pid
    measured+=("$store")
    sleep 1
    R[$key.rss_idle]=$(mem_kb "$gw_pid" VmRSS)
    for m; do "${m}_measure" "$key"; done
    stop_store_gateway
  done
}

stop_store_gateway() { # stops the gateway measure_stores started on this store, if it still runs
  [ -z "${shared_gw_pid:-}" ] || stop_pid "$shared_gw_pid"
  shared_gw_pid=""
}

# --- the table ---------------------------------------------------------------------------------
fmt() { # number digits: "n/a" for missing
  case "${1:-nan}" in nan|""|-nan|inf) echo "n/a" ;; *) printf "%.${2:-0}f" "$1" ;; esac
}
sum() { # a b: a+b, or nan
  awk -v a="${1:-nan}" -v b="${2:-nan}" 'BEGIN { if (a == "nan" || b == "nan" || a == "" || b == "") print "nan"; else printf "%.4f", a + b }'
}
verdict() { # value op limit: met / missed (by how much) / n/a
  awk -v v="${1:-nan}" -v op="$2" -v l="$3" 'BEGIN {
    if (v == "nan" || v == "") { print "n/a"; exit }
    if (op == ">=") { if (v >= l) print "met"; else printf "missed (%.1f%% short)\n", (1 - v / l) * 100 }
    else { if (v <= l) print "met"; else printf "missed (%.1f%% over)\n", (v / l - 1) * 100 }
  }'
}

mb() { awk -v k="${1:-nan}" 'BEGIN { if (k == "nan" || k == "") print "nan"; else printf "%.1f", k / 1024 }'; }
g() { echo "${R[$key.$1]:-nan}"; }

# The order of the table, whatever order the measurements ran in.
store_rows=(ingest metrics_scrape accept delivery memory startup)
run_rows=(paths profile)

write_table() { # measures...: prints the table of those that ran and writes it to results/
  local table=$work/table.md m ran=" $* " out=$bench_name.md
  [ "$bench_name" = run ] && out=latest.md
  {
    echo "# bench/$bench_name results"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM; git $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet 2>/dev/null || echo '+dirty')"
    echo
    echo "Mode: $([ "$quick" = 1 ] && echo 'quick (smoke test: short points, small counts)' || echo full); ingest $duration s per point after $warmup s warm-up, $connections connections, wrk -t$wrk_threads; delivery $delivery_reports reports x $batch_size, concurrency $delivery_concurrency; memory $memory_reports reports x $batch_size; start-up median of $startup_runs; large report median of $large_requests."
    echo
    # A run of per-run measurements only (bench/profile alone) has no store tables.
    local rows=()
    for m in "${store_rows[@]}"; do [[ $ran != *" $m "* ]] || rows+=("$m"); done
    [ ${#rows[@]} -gt 0 ] || measured=()
    for store in "${measured[@]}"; do
      key=$(tr -c 'a-zA-Z0-9\n' '_' <<<"$store")
      echo "## Store: $store"
      echo
      echo "| Measure | Gateway | Baseline | Ratio | Target | Verdict |"
      echo "|---|---:|---|---:|---|---|"
      for m in "${rows[@]}"; do "${m}_rows"; done
      echo
      [[ $ran != *" delivery "* ]] || delivery_notes
    done
    for s in "${skipped[@]}"; do echo "Store skipped: $s"; echo; done
    for m in "${run_rows[@]}"; do
      [[ $ran != *" $m "* ]] || "${m}_rows"
    done
    if [ ${#broken[@]} -gt 0 ]; then
      echo "## Broken"
      echo
      for b in "${broken[@]}"; do echo "- $b"; done
    else
      echo "Every measurement ran ($((SECONDS - run_started)) s after the build). Verdicts compare against the issue's targets; they never fail the run."
    fi
  } >"$table"
  cp "$table" "$results/$out"
  cat "$table"
  say "written: $results/$out (logs: $logs)"
}

bench_main() { # measures...: each store's, then the run's (in the order given), then the table
  local m store_measures=() run_measures=()
  for m; do
    if declare -F "${m}_measure" >/dev/null; then store_measures+=("$m"); else run_measures+=("$m"); fi
  done
  measure_stores "${store_measures[@]}"
  for m in "${run_measures[@]}"; do "${m}_run"; done
  write_table "$@"
  [ ${#broken[@]} -eq 0 ]
}

bench_alone() { # flags... -- measures...: a measurement script run by itself, with what it needs
  local args=() m
  while [ $# -gt 0 ] && [ "$1" != -- ]; do args+=("$1"); shift; done
  shift
  for m; do
    # shellcheck source=/dev/null
    source "$bench/${m//_/-}"
  done
  bench_setup "${args[@]}"
  bench_main "$@"
}
