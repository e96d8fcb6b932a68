#!/usr/bin/env bash
# Submits a month's repayments from a CSV file to the repayment gateway and follows the report
# until Kiva has it. bash + curl, for cron jobs; jq, when installed, formats the answers (without
# it the gateway's JSON is printed as it came). See README.md beside this file for the
# environment, the output and the exit codes (the same for every example in this directory).
set -uo pipefail
export LC_ALL=C # byte-wise matching: [[:cntrl:]] is exactly 0x00-0x1f and 0x7f

MAX_TRIES=8
MAX_WAIT_SECS=60
POLL_INTERVAL_SECS=1
HTTP_TIMEOUT_SECS=30

fail() { echo "$2" >&2; exit "$1"; }

[ $# -eq 1 ] || fail 2 "usage: submit.sh REPAYMENTS.csv"
for name in GATEWAY_URL GATEWAY_API_KEY REPORT_PERIOD; do
  [ -n "${!name:-}" ] || fail 2 "$name must be set"
done
base=${GATEWAY_URL%/}
while [[ $base == */ ]]; do base=${base%/}; done
period=$REPORT_PERIOD
branch=${GATEWAY_BRANCH:-default}
timeout=${POLL_TIMEOUT_SECS:-120}
correction=${REPORT_CORRECTION:-false}
[[ $period =~ ^[0-9]{4}-[0-9]{2}$ ]] || fail 2 "REPORT_PERIOD must be YYYY-MM"
[[ $branch =~ ^[A-Za-z0-9._-]{1,64}$ ]] || fail 2 "GATEWAY_BRANCH must be 1 to 64 of A-Z a-z 0-9 . _ -"
[[ $timeout =~ ^[0-9]{1,6}$ ]] || fail 2 "POLL_TIMEOUT_SECS must be a whole number of seconds"
[[ $correction =~ ^(true|false)$ ]] || fail 2 "REPORT_CORRECTION must be true or false"
command -v curl >/dev/null || fail 2 "curl is not installed"
have_jq=false
command -v jq >/dev/null && have_jq=true

file=$1
[ -r "$file" ] && [ -f "$file" ] || fail 2 "cannot read $file"
iconv -f UTF-8 -t UTF-8 <"$file" >/dev/null 2>&1 || fail 2 "$file: not UTF-8"
# `read` would drop NUL bytes silently; the other examples refuse them as control characters.
[ "$(tr -d '\000' <"$file" | wc -c)" -eq "$(wc -c <"$file")" ] ||
  fail 2 "$file: a cell holds a quote or a control character"

work=$(mktemp -d) || exit 1
trap 'rm -rf "$work"' EXIT

# A cell copied verbatim but for surrounding blanks and quotes, in $cell; fails if it holds a
# quote or a control character (then it could not be sent as it is).
read_cell() {
  local value=$1
  value=${value#"${value%%[!$' \t\r']*}"}
  value=${value%"${value##*[!$' \t\r']}"}
  if [ ${#value} -ge 2 ] && [[ $value == \"*\" ]]; then value=${value:1:${#value}-2}; fi
  [[ $value == *[\"[:cntrl:]]* ]] && return 1
  cell=$value
}

# Cells hold no quote or control character: only the backslash needs escaping.
json_string() { local v=${1//\\/\\\\}; printf '"%s"' "$v"; }

# The body is built by hand, and so are the other examples', so that all send the very same
# bytes for the same file: the gateway compares a retry's body with the first one's. Amounts
# stay the CSV's text.
items=()
header_seen=false
number=0
while IFS= read -r line || [ -n "$line" ]; do
  number=$((number + 1))
  [ $number -eq 1 ] && line=${line#$'\xef\xbb\xbf'} # Excel's byte order mark
  [[ $line =~ ^[$' \t\r']*$ ]] && continue
  cells=()
  rest=$line
  while :; do
    read_cell "${rest%%,*}" || fail 2 "$file line $number: a cell holds a quote or a control character"
    cells+=("$cell")
    [[ $rest == *,* ]] || break
    rest=${rest#*,}
  done
  if ! $header_seen; then
    [ "${#cells[@]}" -eq 3 ] && [ "${cells[0]},${cells[1]},${cells[2]}" = "loan_id,client_id,amount" ] ||
      fail 2 "$file line $number: the header must be loan_id,client_id,amount"
    header_seen=true
    continue
  fi
  [ "${#cells[@]}" -eq 3 ] || fail 2 "$file line $number: expected 3 cells, found ${#cells[@]}"
  item="{\"loan_id\":$(json_string "${cells[0]}")"
  [ -n "${cells[1]}" ] && item+=",\"client_id\":$(json_string "${cells[1]}")"
  items+=("$item,\"amount\":$(json_string "${cells[2]}")}")
done <"$file"
$header_seen || fail 2 "$file: empty file"

body="{\"period\":$(json_string "$period"),"
# A correction says so, and gets a key of its own: the same file sent again as a correction
# is another report.
kind=""
if [ "$correction" = true ]; then
  body+="\"correction\":true,"
  kind="correction-"
fi
body+="\"repayments\":["
for i in "${!items[@]}"; do
  [ "$i" -gt 0 ] && body+=","
  body+=${items[$i]}
done
body+="]}"
printf '%s' "$body" >"$work/request.json"

hash=$(sha256sum "$file") || exit 1
key="mis-$branch-$period-$kind${hash:0:32}"
echo "idempotency-key: $key"

# One request; sets $status ("000" when no answer arrived), $error, $work/answer and $work/headers.
request() {
  local method=$1 url=$2
  shift 2
  : >"$work/answer"
  : >"$work/headers"
  # The API key goes through a file so that it does not show in the process list.
  printf 'header = "X-Api-Key: %s"\n' "$GATEWAY_API_KEY" >"$work/curlrc"
  status=$(curl -sS -X "$method" -o "$work/answer" -D "$work/headers" -w '%{http_code}' \
    --max-time "$HTTP_TIMEOUT_SECS" -K "$work/curlrc" -H 'Accept: application/json' "$@" "$url" \
    2>"$work/error")
  error=$(head -c 300 "$work/error")
  [ -n "$status" ] || status=000
}

for try in $(seq 1 $MAX_TRIES); do
  request POST "$base/v1/repayments" -H 'Content-Type: application/json' -H 'Expect:' \
    -H "Idempotency-Key: $key" --data-binary @"$work/request.json"
  case $status in
    000) reason="network error: $error" ;;
    409 | 429 | 502 | 503 | 504) reason="HTTP $status" ;;
    *) break ;;
  esac
  if [ "$try" -eq $MAX_TRIES ]; then
    echo "gave up after $MAX_TRIES tries: $reason"
    exit 4
  fi
  wait=$(tr -d '\r' <"$work/headers" | sed -n 's/^[Rr][Ee][Tt][Rr][Yy]-[Aa][Ff][Tt][Ee][Rr]:[ \t]*\([0-9]\{1,9\}\)[ \t]*$/\1/p' | tail -n 1)
  [ -n "$wait" ] || wait=$((1 << (try - 1)))
  wait=$((10#$wait > MAX_WAIT_SECS ? MAX_WAIT_SECS : 10#$wait))
  echo "try $try of $MAX_TRIES failed ($reason); retrying in $wait s" >&2
  sleep "$wait"
done

# jq definitions shared by the filters below: a field as text, "" when absent or not text.
JQ_DEFS='def str: if type == "string" then . elif type == "number" then tostring else "" end;
  def list: if type == "array" then .[] | objects else empty end;'
answer_as_object() { jq -c 'if type == "object" then . else {} end' "$work/answer" 2>/dev/null || echo '{}'; }

if [ "$status" != 202 ]; then
  if $have_jq; then
    answer_as_object | jq -r --arg status "$status" "$JQ_DEFS"'
      "refused: HTTP \($status): \(if .detail != null then .detail else .title end | str)",
      (.errors | list | "\(.pointer | str): \(.detail | str)")'
  else
    echo "refused: HTTP $status:"
    cat "$work/answer"
    echo
  fi
  exit 3
fi
if $have_jq; then
  id=$(answer_as_object | jq -r "$JQ_DEFS"' .id | str')
else
  id=$(sed -n 's/.*"id":"\([0-9a-fA-F-]\{36\}\)".*/\1/p' "$work/answer" | head -n 1)
fi
if ! [[ $id =~ ^[0-9a-fA-F-]{36}$ ]]; then
  echo "gave up: the 202 answer has no report id"
  exit 4
fi
if $have_jq; then
  answer_as_object | jq -r "$JQ_DEFS"' "accepted \(.id | str): \(.repayment_count | str) repayments, total \(.total_amount | str)"'
else
  echo "accepted $id: $(sed -n 's/.*"repayment_count":\([0-9]*\).*/\1/p' "$work/answer") repayments, total $(sed -n 's/.*"total_amount":"\([^"]*\)".*/\1/p' "$work/answer")"
fi

# The report's status: the first "status" of the gateway's compact JSON is the report's own
# (batches have a "state"), so this works without jq as well.
report_status() {
  if $have_jq; then
    jq -r "$JQ_DEFS"' if type == "object" then .status | str else "" end' "$work/report" 2>/dev/null
  else
    grep -o '"status":"[a-z_]*"' "$work/report" | head -n 1 | cut -d'"' -f4
  fi
}

deadline=$((SECONDS + 10#$timeout))
final=false
have_report=false
while :; do
  request GET "$base/v1/reports/$id"
  if [ "$status" = 200 ]; then
    cp "$work/answer" "$work/report"
    have_report=true
    case $(report_status) in
      queued | delivering) ;;
      *) final=true; break ;;
    esac
  elif [ "$status" = 000 ]; then
    echo "polling the report: network error: $error" >&2
  else
    echo "polling the report: HTTP $status" >&2
  fi
  [ $((SECONDS + POLL_INTERVAL_SECS)) -gt $deadline ] && break
  sleep $POLL_INTERVAL_SECS
done
if ! $have_report; then
  echo "status: unknown (not final after $timeout s)"
  exit 7
fi
report_state=$(report_status)
if $final; then echo "status: $report_state"; else echo "status: $report_state (not final after $timeout s)"; fi
if $have_jq; then
  jq -r "$JQ_DEFS"' .batches | list | .repayments | list |
    "\(.loan_id | str): \(.state | str)",
    (.problems | list | "  \(.severity | str) \(.code | str | if . == "" then "-" else . end): \(.details | str)")' \
    "$work/report"
else
  cat "$work/report"
  echo
fi
$final || exit 7
# delivered_with_problems: delivered, and Kiva refused some loans (exit 6).
case "$report_state" in delivered | delivered_with_problems) ;; *) exit 5 ;; esac
grep -q '"state":"rejected_by_kiva"' "$work/report" && exit 6
exit 0
