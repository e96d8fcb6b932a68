// Submits a month's repayments from a CSV file to the repayment gateway and follows the report
// until Kiva has it. Java 17+, JDK only: run it as `java Submit.java repayments.csv`. See
// README.md beside this file for the environment, the output and the exit codes (the same for
// every example in this directory).

import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

public class Submit {
    static final int MAX_TRIES = 8;
    static final int MAX_WAIT_SECS = 60;
    static final int POLL_INTERVAL_SECS = 1;
    static final Duration HTTP_TIMEOUT = Duration.ofSeconds(30);
    static final Set<Integer> RETRIED_STATUSES = Set.of(409, 429, 502, 503, 504);
    static final Set<String> PENDING_STATUSES = Set.of("queued", "delivering");

    static final HttpClient HTTP = HttpClient.newBuilder()
            .version(HttpClient.Version.HTTP_1_1)
            .connectTimeout(HTTP_TIMEOUT)
            .build();

    static class Failure extends RuntimeException {
        private static final long serialVersionUID = 1L;
        final int code;

        Failure(int code, String message) {
            super(message);
            this.code = code;
        }
    }

    public static void main(String[] args) throws Exception {
        // Ids and Kiva's messages may hold any character; the platform encoding may be ASCII.
        System.setOut(new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8));
        System.setErr(new PrintStream(new FileOutputStream(FileDescriptor.err), true, StandardCharsets.UTF_8));
        try {
            System.exit(run(args));
        } catch (Failure f) {
            System.err.println(f.getMessage());
            System.exit(f.code);
        }
    }

    static int run(String[] args) throws Exception {
        if (args.length != 1) {
            throw new Failure(2, "usage: java Submit.java REPAYMENTS.csv");
        }
        for (String name : List.of("GATEWAY_URL", "GATEWAY_API_KEY", "REPORT_PERIOD")) {
            if (env(name, "").isEmpty()) {
                throw new Failure(2, name + " must be set");
            }
        }
        String base = env("GATEWAY_URL", "").replaceAll("/+$", "");
        String apiKey = env("GATEWAY_API_KEY", "");
        String period = env("REPORT_PERIOD", "");
        String branch = env("GATEWAY_BRANCH", "default");
        String timeout = env("POLL_TIMEOUT_SECS", "120");
        String correctionText = env("REPORT_CORRECTION", "false");
        if (!period.matches("[0-9]{4}-[0-9]{2}")) {
            throw new Failure(2, "REPORT_PERIOD must be YYYY-MM");
        }
        if (!branch.matches("[A-Za-z0-9._-]{1,64}")) {
            throw new Failure(2, "GATEWAY_BRANCH must be 1 to 64 of A-Z a-z 0-9 . _ -");
        }
        if (!timeout.matches("[0-9]{1,6}")) {
            throw new Failure(2, "POLL_TIMEOUT_SECS must be a whole number of seconds");
        }
        if (!correctionText.matches("true|false")) {
            throw new Failure(2, "REPORT_CORRECTION must be true or false");
        }
        boolean correction = correctionText.equals("true");

        byte[] content = readFile(args[0]);
        List<String[]> repayments = parseCsv(args[0], content);
        // A correction gets a key of its own: the same file sent again as a correction is
        // another report.
        String kind = correction ? "correction-" : "";
        String key = "mis-" + branch + "-" + period + "-" + kind + sha256Hex(content).substring(0, 32);
        System.out.println("idempotency-key: " + key);

        HttpResponse<String> response = submit(base, apiKey, key, reportBody(period, correction, repayments));
        Map<String, Object> answer = asObject(Json.parseOrNull(response.body()));
        if (response.statusCode() != 202) {
            Object message = answer.get("detail") != null ? answer.get("detail") : answer.get("title");
            System.out.println("refused: HTTP " + response.statusCode() + ": " + text(message));
            for (Object error : asList(answer.get("errors"))) {
                Map<String, Object> e = asObject(error);
                System.out.println(text(e.get("pointer")) + ": " + text(e.get("detail")));
            }
            return 3;
        }
        String id = text(answer.get("id"));
        if (!id.matches("[0-9a-fA-F-]{36}")) {
            System.out.println("gave up: the 202 answer has no report id");
            return 4;
        }
        System.out.println("accepted " + id + ": " + text(answer.get("repayment_count"))
                + " repayments, total " + text(answer.get("total_amount")));

        long deadline = System.nanoTime() + Long.parseLong(timeout) * 1_000_000_000L;
        Map<String, Object> report = null;
        boolean isFinal = false;
        while (true) {
            try {
                HttpResponse<String> poll = send(HttpRequest.newBuilder(URI.create(base + "/v1/reports/" + id))
                        .header("X-Api-Key", apiKey).GET());
                if (poll.statusCode() == 200) {
                    report = asObject(Json.parseOrNull(poll.body()));
                    if (!PENDING_STATUSES.contains(text(report.get("status")))) {
                        isFinal = true;
                        break;
                    }
                } else {
                    System.err.println("polling the report: HTTP " + poll.statusCode());
                }
            } catch (IOException e) {
                System.err.println("polling the report: network error: " + e);
            }
            if (System.nanoTime() + POLL_INTERVAL_SECS * 1_000_000_000L > deadline) {
                break;
            }
            Thread.sleep(POLL_INTERVAL_SECS * 1000L);
        }
        if (report == null) {
            System.out.println("status: unknown (not final after " + timeout + " s)");
            return 7;
        }
        String status = text(report.get("status"));
        System.out.println(isFinal ? "status: " + status : "status: " + status + " (not final after " + timeout + " s)");
        boolean refusedLoans = false;
        for (Object batch : asList(report.get("batches"))) {
            for (Object item : asList(asObject(batch).get("repayments"))) {
                Map<String, Object> repayment = asObject(item);
                String state = text(repayment.get("state"));
                System.out.println(text(repayment.get("loan_id")) + ": " + state);
                refusedLoans |= state.equals("rejected_by_kiva");
                for (Object p : asList(repayment.get("problems"))) {
                    Map<String, Object> problem = asObject(p);
                    String code = text(problem.get("code"));
                    System.out.println("  " + text(problem.get("severity")) + " " + (code.isEmpty() ? "-" : code)
                            + ": " + text(problem.get("details")));
                }
            }
        }
        if (!isFinal) {
            return 7;
        }
        // delivered_with_problems: delivered, and Kiva refused some loans (exit 6).
        if (!status.equals("delivered") && !status.equals("delivered_with_problems")) {
            return 5;
        }
        return refusedLoans ? 6 : 0;
    }

    static String env(String name, String fallback) {
        String value = System.getenv(name);
        return value == null || value.isEmpty() ? fallback : value;
    }

    static byte[] readFile(String path) {
        try {
            return Files.readAllBytes(Path.of(path));
        } catch (IOException e) {
            throw new Failure(2, "cannot read " + path + ": " + e.getMessage());
        }
    }

    /** Each repayment as {loan_id, client_id, amount}, cells copied verbatim but for surrounding blanks. */
    static List<String[]> parseCsv(String path, byte[] content) {
        String text;
        try {
            text = StandardCharsets.UTF_8.newDecoder().decode(ByteBuffer.wrap(content)).toString();
        } catch (CharacterCodingException e) {
            throw new Failure(2, path + ": not UTF-8");
        }
        if (text.startsWith("\uFEFF")) { // Excel writes a byte order mark
            text = text.substring(1);
        }
        List<String[]> repayments = new ArrayList<>();
        boolean headerSeen = false;
        String[] lines = text.split("\n", -1);
        for (int i = 0; i < lines.length; i++) {
            int number = i + 1;
            if (trim(lines[i]).isEmpty()) {
                continue;
            }
            String[] raw = lines[i].split(",", -1);
            String[] cells = new String[raw.length];
            for (int c = 0; c < raw.length; c++) {
                cells[c] = cell(raw[c]);
                if (cells[c] == null) {
                    throw new Failure(2, path + " line " + number + ": a cell holds a quote or a control character");
                }
            }
            if (!headerSeen) {
                if (!List.of(cells).equals(List.of("loan_id", "client_id", "amount"))) {
                    throw new Failure(2, path + " line " + number + ": the header must be loan_id,client_id,amount");
                }
                headerSeen = true;
                continue;
            }
            if (cells.length != 3) {
                throw new Failure(2, path + " line " + number + ": expected 3 cells, found " + cells.length);
            }
            repayments.add(cells);
        }
        if (!headerSeen) {
            throw new Failure(2, path + ": empty file");
        }
        return repayments;
    }

    static String trim(String s) {
        int start = 0;
        int end = s.length();
        while (start < end && " \t\r".indexOf(s.charAt(start)) >= 0) {
            start++;
        }
        while (end > start && " \t\r".indexOf(s.charAt(end - 1)) >= 0) {
            end--;
        }
        return s.substring(start, end);
    }

    static String cell(String raw) {
        String value = trim(raw);
        if (value.length() >= 2 && value.startsWith("\"") && value.endsWith("\"")) {
            value = value.substring(1, value.length() - 1);
        }
        for (char ch : value.toCharArray()) {
            if (ch == '"' || ch < 0x20 || ch == 0x7f) {
                return null;
            }
        }
        return value;
    }

    // Cells hold no quote or control character (see cell): only the backslash needs escaping.
    static String jsonString(String value) {
        return "\"" + value.replace("\\", "\\\\") + "\"";
    }

    // Built by hand so that every example sends the very same bytes for the same file: the
    // gateway compares a retry's body with the first one's. Amounts stay the CSV's text.
    static String reportBody(String period, boolean correction, List<String[]> repayments) {
        StringBuilder body = new StringBuilder("{\"period\":").append(jsonString(period)).append(",")
            .append(correction ? "\"correction\":true," : "").append("\"repayments\":[");
        for (int i = 0; i < repayments.size(); i++) {
            String[] r = repayments.get(i);
            body.append(i == 0 ? "" : ",").append("{\"loan_id\":").append(jsonString(r[0]));
            if (!r[1].isEmpty()) {
                body.append(",\"client_id\":").append(jsonString(r[1]));
            }
            body.append(",\"amount\":").append(jsonString(r[2])).append("}");
        }
        return body.append("]}").toString();
    }

    static String sha256Hex(byte[] content) throws Exception {
        StringBuilder hex = new StringBuilder();
        for (byte b : MessageDigest.getInstance("SHA-256").digest(content)) {
            hex.append(String.format("%02x", b));
        }
        return hex.toString();
    }

    static HttpResponse<String> send(HttpRequest.Builder request) throws IOException, InterruptedException {
        return HTTP.send(request.timeout(HTTP_TIMEOUT).header("Accept", "application/json").build(),
                HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8));
    }

    /** The first answer that is not worth retrying; exits 4 when the tries run out. */
    static HttpResponse<String> submit(String base, String apiKey, String key, String body) throws Exception {
        for (int tryNumber = 1; ; tryNumber++) {
            String reason;
            String retryAfter = "";
            try {
                HttpResponse<String> response = send(HttpRequest.newBuilder(URI.create(base + "/v1/repayments"))
                        .header("X-Api-Key", apiKey)
                        .header("Content-Type", "application/json")
                        .header("Idempotency-Key", key)
                        .POST(HttpRequest.BodyPublishers.ofString(body, StandardCharsets.UTF_8)));
                if (!RETRIED_STATUSES.contains(response.statusCode())) {
                    return response;
                }
                reason = "HTTP " + response.statusCode();
                retryAfter = response.headers().firstValue("Retry-After").orElse("").trim();
            } catch (IOException e) {
                reason = "network error: " + e;
            }
            if (tryNumber == MAX_TRIES) {
                System.out.println("gave up after " + MAX_TRIES + " tries: " + reason);
                System.exit(4);
            }
            long wait = retryAfter.matches("[0-9]{1,9}") ? Long.parseLong(retryAfter) : 1L << (tryNumber - 1);
            wait = Math.min(wait, MAX_WAIT_SECS);
            System.err.println("try " + tryNumber + " of " + MAX_TRIES + " failed (" + reason + "); retrying in " + wait + " s");
            Thread.sleep(wait * 1000);
        }
    }

    static String text(Object value) {
        if (value instanceof String s) {
            return s;
        }
        return value instanceof StringBuilder number ? number.toString() : "";
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> asObject(Object value) {
        return value instanceof Map ? (Map<String, Object>) value : Map.of();
    }

    @SuppressWarnings("unchecked")
    static List<Object> asList(Object value) {
        return value instanceof List ? (List<Object>) value : List.of();
    }

    /**
     * The JDK has no JSON parser. This one reads objects, arrays, strings, true/false/null,
     * and keeps numbers as their text so that no amount ever goes through a double.
     */
    static final class Json {
        private final String s;
        private int i;

        private Json(String s) {
            this.s = s;
        }

        static Object parseOrNull(String text) {
            try {
                Json json = new Json(text);
                Object value = json.value();
                json.space();
                return json.i == text.length() ? value : null;
            } catch (RuntimeException e) {
                return null;
            }
        }

        private void space() {
            while (i < s.length() && " \t\r\n".indexOf(s.charAt(i)) >= 0) {
                i++;
            }
        }

        private Object value() {
            space();
            char c = s.charAt(i);
            if (c == '{') {
                Map<String, Object> object = new LinkedHashMap<>();
                i++;
                space();
                if (s.charAt(i) == '}') {
                    i++;
                    return object;
                }
                while (true) {
                    space();
                    String name = string();
                    space();
                    expect(':');
                    object.put(name, value());
                    space();
                    if (s.charAt(i++) == '}') {
                        return object;
                    }
                    if (s.charAt(i - 1) != ',') {
                        throw new IllegalArgumentException("expected , or }");
                    }
                }
            }
            if (c == '[') {
                List<Object> array = new ArrayList<>();
                i++;
                space();
                if (s.charAt(i) == ']') {
                    i++;
                    return array;
                }
                while (true) {
                    array.add(value());
                    space();
                    if (s.charAt(i++) == ']') {
                        return array;
                    }
                    if (s.charAt(i - 1) != ',') {
                        throw new IllegalArgumentException("expected , or ]");
                    }
                }
            }
            if (c == '"') {
                return string();
            }
            for (String word : List.of("true", "false", "null")) {
                if (s.startsWith(word, i)) {
                    i += word.length();
                    return word.equals("null") ? null : Boolean.valueOf(word);
                }
            }
            int start = i;
            while (i < s.length() && "+-0123456789.eE".indexOf(s.charAt(i)) >= 0) {
                i++;
            }
            if (start == i) {
                throw new IllegalArgumentException("unexpected " + c);
            }
            return new StringBuilder(s.substring(start, i)); // a number, as its text
        }

        private void expect(char c) {
            if (s.charAt(i++) != c) {
                throw new IllegalArgumentException("expected " + c);
            }
        }

        private String string() {
            expect('"');
            StringBuilder out = new StringBuilder();
            while (true) {
                char c = s.charAt(i++);
                if (c == '"') {
                    return out.toString();
                }
                if (c != '\\') {
                    out.append(c);
                    continue;
                }
                char e = s.charAt(i++);
                switch (e) {
                    case 'b' -> out.append('\b');
                    case 'f' -> out.append('\f');
                    case 'n' -> out.append('\n');
                    case 'r' -> out.append('\r');
                    case 't' -> out.append('\t');
                    case 'u' -> {
                        out.append((char) Integer.parseInt(s.substring(i, i + 4), 16));
                        i += 4;
                    }
                    default -> out.append(e);
                }
            }
        }
    }
}
