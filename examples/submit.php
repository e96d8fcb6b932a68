<?php
// Submits a month's repayments from a CSV file to the repayment gateway and follows the report
// until Kiva has it. PHP 8 with the curl extension (Debian: php-cli php-curl). See README.md
// beside this file for the environment, the output and the exit codes (the same for every
// example in this directory).

declare(strict_types=1);

const MAX_TRIES = 8;
const MAX_WAIT_SECS = 60;
const POLL_INTERVAL_SECS = 1;
const HTTP_TIMEOUT_SECS = 30;
const RETRIED_STATUSES = [409, 429, 502, 503, 504];
const PENDING_STATUSES = ['queued', 'delivering'];

function fail(int $code, string $message): void
{
    fwrite(STDERR, $message . "\n");
    exit($code);
}

/** A cell copied verbatim but for surrounding blanks and quotes; null if it can't be sent as is. */
function cell(string $raw): ?string
{
    $value = trim($raw, " \t\r");
    if (strlen($value) >= 2 && $value[0] === '"' && $value[-1] === '"') {
        $value = substr($value, 1, -1);
    }
    return preg_match('/["\x00-\x1f\x7f]/', $value) ? null : $value;
}

/** [file content, list of [loan_id, client_id, amount]]. */
function read_csv(string $path): array
{
    $content = @file_get_contents($path);
    if ($content === false) {
        fail(2, "cannot read $path");
    }
    if (preg_match('//u', $content) !== 1) { // PCRE refuses invalid UTF-8
        fail(2, "$path: not UTF-8");
    }
    $text = str_starts_with($content, "\u{FEFF}") ? substr($content, 3) : $content;
    $repayments = [];
    $header_seen = false;
    foreach (explode("\n", $text) as $index => $line) {
        $number = $index + 1;
        if (trim($line, " \t\r") === '') {
            continue;
        }
        $cells = array_map('cell', explode(',', $line));
        if (in_array(null, $cells, true)) {
            fail(2, "$path line $number: a cell holds a quote or a control character");
        }
        if (!$header_seen) {
            if ($cells !== ['loan_id', 'client_id', 'amount']) {
                fail(2, "$path line $number: the header must be loan_id,client_id,amount");
            }
            $header_seen = true;
            continue;
        }
        if (count($cells) !== 3) {
            fail(2, "$path line $number: expected 3 cells, found " . count($cells));
        }
        $repayments[] = $cells;
    }
    if (!$header_seen) {
        fail(2, "$path: empty file");
    }
    return [$content, $repayments];
}

// Cells hold no quote or control character (see cell()): only the backslash needs escaping.
function json_string(string $value): string
{
    return '"' . str_replace('\\', '\\\\', $value) . '"';
}

// Built by hand so that every example sends the very same bytes for the same file: the gateway
// compares a retry's body with the first one's. Amounts stay the CSV's text, never a float.
function report_body(string $period, bool $correction, array $repayments): string
{
    $items = [];
    foreach ($repayments as [$loan_id, $client_id, $amount]) {
        $item = '{"loan_id":' . json_string($loan_id);
        if ($client_id !== '') {
            $item .= ',"client_id":' . json_string($client_id);
        }
        $items[] = $item . ',"amount":' . json_string($amount) . '}';
    }
    $head = '{"period":' . json_string($period) . ',' . ($correction ? '"correction":true,' : '');
    return $head . '"repayments":[' . implode(',', $items) . ']}';
}

/** [status, lower-cased headers, body]; or a string: the network error. */
function request(string $method, string $url, string $api_key, ?string $body = null, ?string $key = null): array|string
{
    // `Expect:` stops curl from waiting for a `100 Continue` before sending a large body.
    $headers = ["X-Api-Key: $api_key", 'Accept: application/json', 'Expect:'];
    if ($body !== null) {
        $headers[] = 'Content-Type: application/json';
    }
    if ($key !== null) {
        $headers[] = "Idempotency-Key: $key";
    }
    $received = [];
    $curl = curl_init($url);
    curl_setopt_array($curl, [
        CURLOPT_CUSTOMREQUEST => $method,
        CURLOPT_HTTPHEADER => $headers,
        CURLOPT_RETURNTRANSFER => true,
        CURLOPT_TIMEOUT => HTTP_TIMEOUT_SECS,
        CURLOPT_HEADERFUNCTION => function ($curl, string $line) use (&$received): int {
            $parts = explode(':', $line, 2);
            if (count($parts) === 2) {
                $received[strtolower(trim($parts[0]))] = trim($parts[1]);
            }
            return strlen($line);
        },
    ]);
    if ($body !== null) {
        curl_setopt($curl, CURLOPT_POSTFIELDS, $body);
    }
    $text = curl_exec($curl);
    if ($text === false) {
        $error = curl_error($curl);
        curl_close($curl);
        return $error;
    }
    $status = curl_getinfo($curl, CURLINFO_RESPONSE_CODE);
    curl_close($curl);
    return [$status, $received, $text];
}

function parse_json(string $text): array
{
    $value = json_decode($text, true);
    return is_array($value) ? $value : [];
}

function retry_wait(array $headers, int $try): int
{
    $value = $headers['retry-after'] ?? '';
    $wait = ctype_digit($value) ? (int) $value : 2 ** ($try - 1);
    return min($wait, MAX_WAIT_SECS);
}

/** [status, body] of the first answer that is not worth retrying. */
function submit(string $base, string $api_key, string $key, string $body): array
{
    for ($try = 1; ; $try++) {
        $answer = request('POST', "$base/v1/repayments", $api_key, $body, $key);
        if (is_string($answer)) {
            $reason = "network error: $answer";
            $headers = [];
        } else {
            [$status, $headers, $text] = $answer;
            if (!in_array($status, RETRIED_STATUSES, true)) {
                return [$status, $text];
            }
            $reason = "HTTP $status";
        }
        if ($try === MAX_TRIES) {
            echo 'gave up after ' . MAX_TRIES . " tries: $reason\n";
            exit(4);
        }
        $wait = retry_wait($headers, $try);
        fwrite(STDERR, "try $try of " . MAX_TRIES . " failed ($reason); retrying in $wait s\n");
        sleep($wait);
    }
}

/** [the last report seen or null, whether it is final]. */
function follow(string $base, string $api_key, string $id, int $timeout): array
{
    $deadline = microtime(true) + $timeout;
    $report = null;
    while (true) {
        $answer = request('GET', "$base/v1/reports/$id", $api_key);
        if (is_string($answer)) {
            fwrite(STDERR, "polling the report: network error: $answer\n");
        } elseif ($answer[0] === 200) {
            $report = parse_json($answer[2]);
            if (!in_array($report['status'] ?? null, PENDING_STATUSES, true)) {
                return [$report, true];
            }
        } else {
            fwrite(STDERR, "polling the report: HTTP {$answer[0]}\n");
        }
        if (microtime(true) + POLL_INTERVAL_SECS > $deadline) {
            return [$report, false];
        }
        sleep(POLL_INTERVAL_SECS);
    }
}

function text_of(mixed $value): string
{
    return is_string($value) || is_int($value) || is_float($value) ? (string) $value : '';
}

if ($argc !== 2) {
    fail(2, 'usage: php submit.php REPAYMENTS.csv');
}
foreach (['GATEWAY_URL', 'GATEWAY_API_KEY', 'REPORT_PERIOD'] as $name) {
    if ((string) getenv($name) === '') {
        fail(2, "$name must be set");
    }
}
$base = rtrim((string) getenv('GATEWAY_URL'), '/');
$api_key = (string) getenv('GATEWAY_API_KEY');
$period = (string) getenv('REPORT_PERIOD');
$branch = (string) getenv('GATEWAY_BRANCH') ?: 'default';
$timeout = (string) getenv('POLL_TIMEOUT_SECS') ?: '120';
$correction_text = (string) getenv('REPORT_CORRECTION') ?: 'false';
if (!preg_match('/^[0-9]{4}-[0-9]{2}$/D', $period)) {
    fail(2, 'REPORT_PERIOD must be YYYY-MM');
}
if (!preg_match('/^[A-Za-z0-9._-]{1,64}$/D', $branch)) {
    fail(2, 'GATEWAY_BRANCH must be 1 to 64 of A-Z a-z 0-9 . _ -');
}
if (!preg_match('/^[0-9]{1,6}$/D', $timeout)) {
    fail(2, 'POLL_TIMEOUT_SECS must be a whole number of seconds');
}
if ($correction_text !== 'true' && $correction_text !== 'false') {
    fail(2, 'REPORT_CORRECTION must be true or false');
}
$correction = $correction_text === 'true';

[$content, $repayments] = read_csv($argv[1]);
// A correction gets a key of its own: the same file sent again as a correction is another report.
$kind = $correction ? 'correction-' : '';
$key = "mis-$branch-$period-$kind" . substr(hash('sha256', $content), 0, 32);
echo "idempotency-key: $key\n";

[$status, $text] = submit($base, $api_key, $key, report_body($period, $correction, $repayments));
$answer = parse_json($text);
if ($status !== 202) {
    echo "refused: HTTP $status: " . text_of($answer['detail'] ?? $answer['title'] ?? '') . "\n";
    foreach (is_array($answer['errors'] ?? null) ? $answer['errors'] : [] as $error) {
        echo text_of($error['pointer'] ?? '') . ': ' . text_of($error['detail'] ?? '') . "\n";
    }
    exit(3);
}
$id = text_of($answer['id'] ?? '');
if (!preg_match('/^[0-9a-fA-F-]{36}$/D', $id)) {
    echo "gave up: the 202 answer has no report id\n";
    exit(4);
}
echo "accepted $id: " . text_of($answer['repayment_count'] ?? '') . ' repayments, total '
    . text_of($answer['total_amount'] ?? '') . "\n";

[$report, $final] = follow($base, $api_key, $id, (int) $timeout);
if ($report === null) {
    echo "status: unknown (not final after $timeout s)\n";
    exit(7);
}
$report_status = text_of($report['status'] ?? '');
echo $final ? "status: $report_status\n" : "status: $report_status (not final after $timeout s)\n";
$refused_loans = false;
foreach ($report['batches'] ?? [] as $batch) {
    foreach ($batch['repayments'] ?? [] as $repayment) {
        $state = text_of($repayment['state'] ?? '');
        echo text_of($repayment['loan_id'] ?? '') . ": $state\n";
        $refused_loans = $refused_loans || $state === 'rejected_by_kiva';
        foreach ($repayment['problems'] ?? [] as $problem) {
            $code = text_of($problem['code'] ?? '');
            echo '  ' . text_of($problem['severity'] ?? '') . ' ' . ($code === '' ? '-' : $code) . ': '
                . text_of($problem['details'] ?? '') . "\n";
        }
    }
}
if (!$final) {
    exit(7);
}
// delivered_with_problems: delivered, and Kiva refused some loans (exit 6).
if ($report_status !== 'delivered' && $report_status !== 'delivered_with_problems') {
    exit(5);
}
exit($refused_loans ? 6 : 0);
