// Submits a month's repayments from a CSV file to the repayment gateway and follows the report
// until Kiva has it. C# with HttpClient only: builds with Mono (`mcs -r:System.Net.Http
// Submit.cs`, then `mono Submit.exe repayments.csv`) and unchanged in a .NET 6+ console project.
// See README.md beside this file for the environment, the output and the exit codes (the same
// for every example in this directory).

using System;
using System.Collections.Generic;
using System.IO;
using System.Net.Http;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using System.Threading;

public static class Submit
{
    const int MaxTries = 8;
    const int MaxWaitSecs = 60;
    const int PollIntervalSecs = 1;
    static readonly int[] RetriedStatuses = { 409, 429, 502, 503, 504 };
    static readonly string[] PendingStatuses = { "queued", "delivering" };
    static readonly HttpClient Http = NewClient();

    class Failure : Exception
    {
        public readonly int Code;
        public Failure(int code, string message) : base(message) { Code = code; }
    }

    class Answer
    {
        public int Status;
        public string RetryAfter = "";
        public string Body = "";
    }

    public static int Main(string[] args)
    {
        // Ids and Kiva's messages may hold any character; the console's encoding may be ASCII.
        Console.OutputEncoding = new UTF8Encoding(false);
        try
        {
            return Run(args);
        }
        catch (Failure f)
        {
            Console.Error.WriteLine(f.Message);
            return f.Code;
        }
    }

    static HttpClient NewClient()
    {
        var client = new HttpClient();
        client.Timeout = TimeSpan.FromSeconds(30);
        // Mono would otherwise send `Expect: 100-continue` and wait for an interim answer.
        client.DefaultRequestHeaders.ExpectContinue = false;
        return client;
    }

    static int Run(string[] args)
    {
        if (args.Length != 1) throw new Failure(2, "usage: mono Submit.exe REPAYMENTS.csv");
        foreach (var name in new[] { "GATEWAY_URL", "GATEWAY_API_KEY", "REPORT_PERIOD" })
        {
            if (Env(name, "") == "") throw new Failure(2, name + " must be set");
        }
        var baseUrl = Env("GATEWAY_URL", "").TrimEnd('/');
        var apiKey = Env("GATEWAY_API_KEY", "");
        var period = Env("REPORT_PERIOD", "");
        var branch = Env("GATEWAY_BRANCH", "default");
        var timeout = Env("POLL_TIMEOUT_SECS", "120");
        var correctionText = Env("REPORT_CORRECTION", "false");
        if (!Regex.IsMatch(period, "^[0-9]{4}-[0-9]{2}$")) throw new Failure(2, "REPORT_PERIOD must be YYYY-MM");
        if (!Regex.IsMatch(branch, "^[A-Za-z0-9._-]{1,64}$"))
            throw new Failure(2, "GATEWAY_BRANCH must be 1 to 64 of A-Z a-z 0-9 . _ -");
        if (!Regex.IsMatch(timeout, "^[0-9]{1,6}$"))
            throw new Failure(2, "POLL_TIMEOUT_SECS must be a whole number of seconds");
        if (correctionText != "true" && correctionText != "false")
            throw new Failure(2, "REPORT_CORRECTION must be true or false");
        var correction = correctionText == "true";

        byte[] content;
        try
        {
            content = File.ReadAllBytes(args[0]);
        }
        catch (Exception e)
        {
            throw new Failure(2, "cannot read " + args[0] + ": " + e.Message);
        }
        var repayments = ParseCsv(args[0], content);
        // A correction gets a key of its own: the same file sent again as a correction is
        // another report.
        var kind = correction ? "correction-" : "";
        var key = "mis-" + branch + "-" + period + "-" + kind + Sha256Hex(content).Substring(0, 32);
        Console.WriteLine("idempotency-key: " + key);

        var response = Post(baseUrl, apiKey, key, ReportBody(period, correction, repayments));
        var answer = AsObject(Json.ParseOrNull(response.Body));
        if (response.Status != 202)
        {
            var message = Get(answer, "detail") ?? Get(answer, "title");
            Console.WriteLine("refused: HTTP " + response.Status + ": " + Text(message));
            foreach (var error in AsList(Get(answer, "errors")))
            {
                var e = AsObject(error);
                Console.WriteLine(Text(Get(e, "pointer")) + ": " + Text(Get(e, "detail")));
            }
            return 3;
        }
        var id = Text(Get(answer, "id"));
        if (!Regex.IsMatch(id, "^[0-9a-fA-F-]{36}$"))
        {
            Console.WriteLine("gave up: the 202 answer has no report id");
            return 4;
        }
        Console.WriteLine("accepted " + id + ": " + Text(Get(answer, "repayment_count")) + " repayments, total "
            + Text(Get(answer, "total_amount")));

        var deadline = DateTime.UtcNow.AddSeconds(int.Parse(timeout));
        Dictionary<string, object> report = null;
        var isFinal = false;
        while (true)
        {
            try
            {
                var poll = Send(HttpMethod.Get, baseUrl + "/v1/reports/" + id, apiKey, null, null);
                if (poll.Status == 200)
                {
                    report = AsObject(Json.ParseOrNull(poll.Body));
                    if (Array.IndexOf(PendingStatuses, Text(Get(report, "status"))) < 0)
                    {
                        isFinal = true;
                        break;
                    }
                }
                else
                {
                    Console.Error.WriteLine("polling the report: HTTP " + poll.Status);
                }
            }
            catch (Exception e) when (IsNetworkError(e))
            {
                Console.Error.WriteLine("polling the report: network error: " + e.Message);
            }
            if (DateTime.UtcNow.AddSeconds(PollIntervalSecs) > deadline) break;
            Thread.Sleep(PollIntervalSecs * 1000);
        }
        if (report == null)
        {
            Console.WriteLine("status: unknown (not final after " + timeout + " s)");
            return 7;
        }
        var status = Text(Get(report, "status"));
        Console.WriteLine(isFinal ? "status: " + status : "status: " + status + " (not final after " + timeout + " s)");
        var refusedLoans = false;
        foreach (var batch in AsList(Get(report, "batches")))
        {
            foreach (var item in AsList(Get(AsObject(batch), "repayments")))
            {
                var repayment = AsObject(item);
                var state = Text(Get(repayment, "state"));
                Console.WriteLine(Text(Get(repayment, "loan_id")) + ": " + state);
                refusedLoans |= state == "rejected_by_kiva";
                foreach (var p in AsList(Get(repayment, "problems")))
                {
                    var problem = AsObject(p);
                    var code = Text(Get(problem, "code"));
                    Console.WriteLine("  " + Text(Get(problem, "severity")) + " " + (code == "" ? "-" : code) + ": "
                        + Text(Get(problem, "details")));
                }
            }
        }
        if (!isFinal) return 7;
        // delivered_with_problems: delivered, and Kiva refused some loans (exit 6).
        if (status != "delivered" && status != "delivered_with_problems") return 5;
        return refusedLoans ? 6 : 0;
    }

    static string Env(string name, string fallback)
    {
        var value = Environment.GetEnvironmentVariable(name);
        return string.IsNullOrEmpty(value) ? fallback : value;
    }

    // Each repayment as {loan_id, client_id, amount}, cells copied verbatim but for surrounding blanks.
    static List<string[]> ParseCsv(string path, byte[] content)
    {
        string text;
        try
        {
            text = new UTF8Encoding(false, true).GetString(content);
        }
        catch (ArgumentException)
        {
            throw new Failure(2, path + ": not UTF-8");
        }
        if (text.StartsWith("\uFEFF", StringComparison.Ordinal)) text = text.Substring(1); // Excel's byte order mark
        var repayments = new List<string[]>();
        var headerSeen = false;
        var lines = text.Split('\n');
        for (var i = 0; i < lines.Length; i++)
        {
            var number = i + 1;
            if (lines[i].Trim(' ', '\t', '\r') == "") continue;
            var raw = lines[i].Split(',');
            var cells = new string[raw.Length];
            for (var c = 0; c < raw.Length; c++)
            {
                cells[c] = Cell(raw[c]);
                if (cells[c] == null)
                    throw new Failure(2, path + " line " + number + ": a cell holds a quote or a control character");
            }
            if (!headerSeen)
            {
                if (string.Join(",", cells) != "loan_id,client_id,amount" || cells.Length != 3)
                    throw new Failure(2, path + " line " + number + ": the header must be loan_id,client_id,amount");
                headerSeen = true;
                continue;
            }
            if (cells.Length != 3)
                throw new Failure(2, path + " line " + number + ": expected 3 cells, found " + cells.Length);
            repayments.Add(cells);
        }
        if (!headerSeen) throw new Failure(2, path + ": empty file");
        return repayments;
    }

    static string Cell(string raw)
    {
        var value = raw.Trim(' ', '\t', '\r');
        if (value.Length >= 2 && value[0] == '"' && value[value.Length - 1] == '"')
            value = value.Substring(1, value.Length - 2);
        foreach (var ch in value)
        {
            if (ch == '"' || ch < 0x20 || ch == 0x7f) return null;
        }
        return value;
    }

    // Cells hold no quote or control character (see Cell): only the backslash needs escaping.
    static string JsonString(string value)
    {
        return "\"" + value.Replace("\\", "\\\\") + "\"";
    }

    // Built by hand so that every example sends the very same bytes for the same file: the
    // gateway compares a retry's body with the first one's. Amounts stay the CSV's text.
    static string ReportBody(string period, bool correction, List<string[]> repayments)
    {
        var body = new StringBuilder("{\"period\":").Append(JsonString(period)).Append(",")
            .Append(correction ? "\"correction\":true," : "").Append("\"repayments\":[");
        for (var i = 0; i < repayments.Count; i++)
        {
            var r = repayments[i];
            body.Append(i == 0 ? "" : ",").Append("{\"loan_id\":").Append(JsonString(r[0]));
            if (r[1] != "") body.Append(",\"client_id\":").Append(JsonString(r[1]));
            body.Append(",\"amount\":").Append(JsonString(r[2])).Append("}");
        }
        return body.Append("]}").ToString();
    }

    static string Sha256Hex(byte[] content)
    {
        using (var sha = SHA256.Create())
        {
            var hex = new StringBuilder();
            foreach (var b in sha.ComputeHash(content)) hex.Append(b.ToString("x2"));
            return hex.ToString();
        }
    }

    static bool IsNetworkError(Exception e)
    {
        // A timeout surfaces as a cancellation; a dropped connection as HttpRequestException or IOException.
        return e is HttpRequestException || e is OperationCanceledException || e is IOException;
    }

    static Answer Send(HttpMethod method, string url, string apiKey, string body, string idempotencyKey)
    {
        using (var request = new HttpRequestMessage(method, url))
        {
            request.Headers.Add("X-Api-Key", apiKey);
            request.Headers.Add("Accept", "application/json");
            if (idempotencyKey != null) request.Headers.Add("Idempotency-Key", idempotencyKey);
            if (body != null)
            {
                request.Content = new ByteArrayContent(new UTF8Encoding(false).GetBytes(body));
                request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            }
            using (var response = Http.SendAsync(request).GetAwaiter().GetResult())
            {
                var answer = new Answer();
                answer.Status = (int)response.StatusCode;
                IEnumerable<string> values;
                if (response.Headers.TryGetValues("Retry-After", out values))
                    answer.RetryAfter = string.Join(",", values).Trim();
                answer.Body = response.Content.ReadAsStringAsync().GetAwaiter().GetResult();
                return answer;
            }
        }
    }

    // The first answer that is not worth retrying; exits 4 when the tries run out.
    static Answer Post(string baseUrl, string apiKey, string key, string body)
    {
        for (var tryNumber = 1; ; tryNumber++)
        {
            string reason;
            var retryAfter = "";
            try
            {
                var answer = Send(HttpMethod.Post, baseUrl + "/v1/repayments", apiKey, body, key);
                if (Array.IndexOf(RetriedStatuses, answer.Status) < 0) return answer;
                reason = "HTTP " + answer.Status;
                retryAfter = answer.RetryAfter;
            }
            catch (Exception e) when (IsNetworkError(e))
            {
                reason = "network error: " + e.Message;
            }
            if (tryNumber == MaxTries)
            {
                Console.WriteLine("gave up after " + MaxTries + " tries: " + reason);
                Environment.Exit(4);
            }
            long wait = Regex.IsMatch(retryAfter, "^[0-9]{1,9}$") ? long.Parse(retryAfter) : 1L << (tryNumber - 1);
            wait = Math.Min(wait, MaxWaitSecs);
            Console.Error.WriteLine("try " + tryNumber + " of " + MaxTries + " failed (" + reason + "); retrying in " + wait + " s");
            Thread.Sleep(TimeSpan.FromSeconds(wait));
        }
    }

    static object Get(Dictionary<string, object> o, string name)
    {
        object value;
        return o.TryGetValue(name, out value) ? value : null;
    }

    static string Text(object value)
    {
        if (value is string) return (string)value;
        return value is Json.Number ? ((Json.Number)value).Text : "";
    }

    static Dictionary<string, object> AsObject(object value)
    {
        return value as Dictionary<string, object> ?? new Dictionary<string, object>();
    }

    static List<object> AsList(object value)
    {
        return value as List<object> ?? new List<object>();
    }

    // Neither Mono nor .NET 6 ship a JSON parser the other has, so here is one: objects,
    // arrays, strings, true/false/null, and numbers kept as their text (no amount goes through
    // a double).
    class Json
    {
        public class Number
        {
            public string Text;
        }

        readonly string s;
        int i;

        Json(string s) { this.s = s; }

        public static object ParseOrNull(string text)
        {
            try
            {
                var json = new Json(text);
                var value = json.Value();
                json.Space();
                return json.i == text.Length ? value : null;
            }
            catch (Exception e) when (e is FormatException || e is IndexOutOfRangeException || e is ArgumentException)
            {
                return null;
            }
        }

        void Space()
        {
            while (i < s.Length && " \t\r\n".IndexOf(s[i]) >= 0) i++;
        }

        void Expect(char c)
        {
            if (s[i++] != c) throw new FormatException("expected " + c);
        }

        object Value()
        {
            Space();
            var c = s[i];
            if (c == '{')
            {
                var obj = new Dictionary<string, object>();
                i++;
                Space();
                if (s[i] == '}') { i++; return obj; }
                while (true)
                {
                    Space();
                    var name = ReadString();
                    Space();
                    Expect(':');
                    obj[name] = Value();
                    Space();
                    var next = s[i++];
                    if (next == '}') return obj;
                    if (next != ',') throw new FormatException("expected , or }");
                }
            }
            if (c == '[')
            {
                var array = new List<object>();
                i++;
                Space();
                if (s[i] == ']') { i++; return array; }
                while (true)
                {
                    array.Add(Value());
                    Space();
                    var next = s[i++];
                    if (next == ']') return array;
                    if (next != ',') throw new FormatException("expected , or ]");
                }
            }
            if (c == '"') return ReadString();
            foreach (var word in new[] { "true", "false", "null" })
            {
                if (string.CompareOrdinal(s, i, word, 0, word.Length) == 0)
                {
                    i += word.Length;
                    return word == "null" ? null : (object)(word == "true");
                }
            }
            var start = i;
            while (i < s.Length && "+-0123456789.eE".IndexOf(s[i]) >= 0) i++;
            if (start == i) throw new FormatException("unexpected " + c);
            return new Number { Text = s.Substring(start, i - start) };
        }

        string ReadString()
        {
            Expect('"');
            var output = new StringBuilder();
            while (true)
            {
                var c = s[i++];
                if (c == '"') return output.ToString();
                if (c != '\\') { output.Append(c); continue; }
                var e = s[i++];
                switch (e)
                {
                    case 'b': output.Append('\b'); break;
                    case 'f': output.Append('\f'); break;
                    case 'n': output.Append('\n'); break;
                    case 'r': output.Append('\r'); break;
                    case 't': output.Append('\t'); break;
                    case 'u':
                        output.Append((char)Convert.ToInt32(s.Substring(i, 4), 16));
                        i += 4;
                        break;
                    default: output.Append(e); break;
                }
            }
        }
    }
}
