#!/usr/bin/env python3
"""Submits a month's repayments from a CSV file to the repayment gateway and follows the report
until Kiva has it. Python 3.8+, standard library only. See README.md beside this file for the
environment, the output and the exit codes (the same for every example in this directory)."""

import hashlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

MAX_TRIES = 8
MAX_WAIT_SECS = 60
POLL_INTERVAL_SECS = 1
HTTP_TIMEOUT_SECS = 30
RETRIED_STATUSES = (409, 429, 502, 503, 504)
PENDING_STATUSES = ("queued", "delivering")


def fail(code, message):
    print(message, file=sys.stderr)
    sys.exit(code)


def read_csv(path):
    """The repayments of the file, with each cell copied verbatim but for surrounding blanks."""
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as e:
        fail(2, f"cannot read {path}: {e.strerror}")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        fail(2, f"{path}: not UTF-8")
    if text.startswith("\ufeff"):  # Excel writes a byte order mark
        text = text[1:]
    repayments = []
    header_seen = False
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip(" \t\r") == "":
            continue
        cells = [cell(c) for c in line.split(",")]
        if any(c is None for c in cells):
            fail(2, f"{path} line {number}: a cell holds a quote or a control character")
        if not header_seen:
            if cells != ["loan_id", "client_id", "amount"]:
                fail(2, f"{path} line {number}: the header must be loan_id,client_id,amount")
            header_seen = True
            continue
        if len(cells) != 3:
            fail(2, f"{path} line {number}: expected 3 cells, found {len(cells)}")
        repayments.append(cells)
    if not header_seen:
        fail(2, f"{path}: empty file")
    return content, repayments


def cell(raw):
    value = raw.strip(" \t\r")
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]
    if any(ch == '"' or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return None
    return value


def json_string(value):
    # Cells hold no quote or control character (see `cell`): only the backslash needs escaping.
    return '"' + value.replace("\\", "\\\\") + '"'


def report_body(period, correction, repayments):
    # Built by hand so that every example sends the very same bytes for the same file: the
    # gateway compares a retry's body with the first one's.
    items = []
    for loan_id, client_id, amount in repayments:
        item = '{"loan_id":' + json_string(loan_id)
        if client_id != "":
            item += ',"client_id":' + json_string(client_id)
        item += ',"amount":' + json_string(amount) + "}"
        items.append(item)
    head = '{"period":' + json_string(period) + ","
    if correction:
        head += '"correction":true,'
    return head + '"repayments":[' + ",".join(items) + "]}"


def request(method, url, api_key, body=None, idempotency_key=None):
    """(status, headers, body text); raises OSError when no answer arrived."""
    req = urllib.request.Request(url, method=method, data=body)
    req.add_header("X-Api-Key", api_key)
    req.add_header("Accept", "application/json")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if idempotency_key is not None:
        req.add_header("Idempotency-Key", idempotency_key)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_SECS) as resp:
            return resp.status, resp.headers, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode("utf-8", "replace")
    except urllib.error.URLError as e:
        raise OSError(str(e.reason)) from e
    except OSError:
        raise
    except Exception as e:  # e.g. http.client.RemoteDisconnected, IncompleteRead
        raise OSError(str(e) or type(e).__name__) from e


def text_of(value):
    return value if isinstance(value, str) else ""


def objects(value):
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def parse_json(text):
    try:
        # Numbers stay text: nothing read from the gateway goes through a float.
        value = json.loads(text, parse_float=str, parse_int=str)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def retry_wait(headers, try_number):
    value = (headers.get("Retry-After") or "").strip() if headers is not None else ""
    wait = int(value) if value.isdigit() else 2 ** (try_number - 1)
    return min(wait, MAX_WAIT_SECS)


def submit(base, api_key, key, body):
    for try_number in range(1, MAX_TRIES + 1):
        headers = None
        try:
            status, headers, text = request("POST", base + "/v1/repayments", api_key, body, key)
        except OSError as e:
            reason = f"network error: {e}"
        else:
            if status not in RETRIED_STATUSES:
                return status, text
            reason = f"HTTP {status}"
        if try_number == MAX_TRIES:
            print(f"gave up after {MAX_TRIES} tries: {reason}")
            sys.exit(4)
        wait = retry_wait(headers, try_number)
        print(f"try {try_number} of {MAX_TRIES} failed ({reason}); retrying in {wait} s", file=sys.stderr)
        time.sleep(wait)


def follow(base, api_key, report_id, timeout):
    deadline = time.monotonic() + timeout
    report = None
    while True:
        try:
            status, _, text = request("GET", f"{base}/v1/reports/{report_id}", api_key)
            if status == 200:
                report = parse_json(text)
                if text_of(report.get("status")) not in PENDING_STATUSES:
                    return report, True
            else:
                print(f"polling the report: HTTP {status}", file=sys.stderr)
        except OSError as e:
            print(f"polling the report: network error: {e}", file=sys.stderr)
        if time.monotonic() + POLL_INTERVAL_SECS > deadline:
            return report, False
        time.sleep(POLL_INTERVAL_SECS)


def main():
    # Ids and Kiva's messages may hold any character; the locale's encoding may be ASCII.
    sys.stdout.reconfigure(encoding="utf-8")
    sys.stderr.reconfigure(encoding="utf-8", errors="backslashreplace")
    if len(sys.argv) != 2:
        fail(2, "usage: submit.py REPAYMENTS.csv")
    env = {}
    for name in ("GATEWAY_URL", "GATEWAY_API_KEY", "REPORT_PERIOD"):
        env[name] = os.environ.get(name, "")
        if env[name] == "":
            fail(2, f"{name} must be set")
    base = env["GATEWAY_URL"].rstrip("/")
    period = env["REPORT_PERIOD"]
    branch = os.environ.get("GATEWAY_BRANCH", "") or "default"
    timeout_text = os.environ.get("POLL_TIMEOUT_SECS", "") or "120"
    correction_text = os.environ.get("REPORT_CORRECTION", "") or "false"
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}", period):
        fail(2, "REPORT_PERIOD must be YYYY-MM")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", branch):
        fail(2, "GATEWAY_BRANCH must be 1 to 64 of A-Z a-z 0-9 . _ -")
    if not re.fullmatch(r"[0-9]{1,6}", timeout_text):
        fail(2, "POLL_TIMEOUT_SECS must be a whole number of seconds")
    if correction_text not in ("true", "false"):
        fail(2, "REPORT_CORRECTION must be true or false")
    correction = correction_text == "true"

    content, repayments = read_csv(sys.argv[1])
    # A correction gets a key of its own: the same file sent again as a correction is another
    # report.
    kind = "correction-" if correction else ""
    key = f"mis-{branch}-{period}-{kind}{hashlib.sha256(content).hexdigest()[:32]}"
    print(f"idempotency-key: {key}")
    body = report_body(period, correction, repayments).encode("utf-8")

    status, text = submit(base, env["GATEWAY_API_KEY"], key, body)
    answer = parse_json(text)
    if status != 202:
        detail = answer.get("detail") if answer.get("detail") is not None else answer.get("title")
        print(f"refused: HTTP {status}: {text_of(detail)}")
        errors = answer.get("errors")
        for error in errors if isinstance(errors, list) else []:
            error = error if isinstance(error, dict) else {}
            print(f"{text_of(error.get('pointer'))}: {text_of(error.get('detail'))}")
        sys.exit(3)
    report_id = text_of(answer.get("id"))
    if not re.fullmatch(r"[0-9a-fA-F-]{36}", report_id):
        print("gave up: the 202 answer has no report id")
        sys.exit(4)
    count, total = text_of(answer.get("repayment_count")), text_of(answer.get("total_amount"))
    print(f"accepted {report_id}: {count} repayments, total {total}")

    report, final = follow(base, env["GATEWAY_API_KEY"], report_id, int(timeout_text))
    if report is None:
        print(f"status: unknown (not final after {timeout_text} s)")
        sys.exit(7)
    status = text_of(report.get("status"))
    print(f"status: {status}" if final else f"status: {status} (not final after {timeout_text} s)")
    refused_loans = False
    for batch in objects(report.get("batches")):
        for repayment in objects(batch.get("repayments")):
            state = text_of(repayment.get("state"))
            print(f"{text_of(repayment.get('loan_id'))}: {state}")
            refused_loans |= state == "rejected_by_kiva"
            for problem in objects(repayment.get("problems")):
                code = text_of(problem.get("code")) or "-"
                print(f"  {text_of(problem.get('severity'))} {code}: {text_of(problem.get('details'))}")
    if not final:
        sys.exit(7)
    # delivered_with_problems: delivered, and Kiva refused some loans (exit 6).
    if status not in ("delivered", "delivered_with_problems"):
        sys.exit(5)
    sys.exit(6 if refused_loans else 0)


if __name__ == "__main__":
    main()
