import Foundation
import GodwitCore

/// Clients fetching one URL over and over, each request on a new TCP connection: `workers`
/// bash loops of `curl` in a network namespace (the lab's client). curl because the host's
/// static busybox wget crashes; no `--retry`: every request stands or falls on its own
/// connection. The kernel's own SYN retransmissions are part of connecting, as for any client.
///
/// Bounded three ways, so it ends by itself whatever the test does: `requestsPerWorker`,
/// `seconds` (no request starts after that, and each lasts at most `maxTime`), and a stop
/// file `stop()` creates. `stop()` then kills the process group if it is still there.
final class HTTPLoad {
    struct Request {
        /// CLOCK_REALTIME when curl started (the lab shares the test's clock).
        var start: Double
        var curlExit: Int
        var httpCode: Int
        var bytes: Int
        var connectSeconds: Double
        var totalSeconds: Double
    }

    let directory: String
    let maxTime: Int
    private let pid: pid_t
    private var stopped = false

    static let script = """
        # load.sh URL WORKERS REQUESTS_PER_WORKER SECONDS MAX_TIME DIR PAUSE
        url=$1 workers=$2 per=$3 seconds=$4 max_time=$5 dir=$6 pause=${7:-0}
        end=$(( EPOCHSECONDS + seconds ))
        worker() {
          local i=0 t0 w
          while (( i < per && EPOCHSECONDS < end )) && [[ ! -e $dir/stop ]]; do
            i=$((i + 1))
            t0=$EPOCHREALTIME
            w=$(curl -s -o /dev/null --max-time "$max_time" \\
                -w '%{http_code} %{size_download} %{time_connect} %{time_total}' "$url")
            echo "$t0 $? $w" >> "$dir/requests.$1"
            [[ $pause == 0 ]] || sleep "$pause"
          done
        }
        for n in $(seq 1 "$workers"); do worker "$n" & done
        wait

        """

    /// `pause`: seconds each worker waits after a request (0: back to back).
    init(netnsPath: String, url: String, workers: Int, requestsPerWorker: Int, seconds: Int, maxTime: Int,
         pause: Double = 0) throws {
        directory = "/tmp/gw-httpload-" + UUID().uuidString.prefix(8).lowercased()
        self.maxTime = maxTime
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Self.script.write(toFile: directory + "/load.sh", atomically: true, encoding: .utf8)
        // nsenter execs bash, so the pid leads a session (DetachedProcess) holding every
        // worker and curl: one kill of the group ends them all.
        pid = try DetachedProcess.spawn(
            ["nsenter", "--net=" + netnsPath, "bash", directory + "/load.sh", url, String(workers),
             String(requestsPerWorker), String(seconds), String(maxTime), directory, String(pause)],
            log: directory + "/load.log")
    }

    deinit { stop() }

    var isRunning: Bool { DetachedProcess.exitStatus(of: pid) == nil }

    /// Lets the requests in progress finish (at most `maxTime`), then kills what is left.
    /// The results stay readable until `remove()`.
    func stop() {
        guard !stopped else { return }
        stopped = true
        _ = FileManager.default.createFile(atPath: directory + "/stop", contents: nil)
        if !poll(timeout: TimeInterval(maxTime + 5), { !self.isRunning }) {
            kill(-pid, SIGKILL)
            _ = poll(timeout: 5) { !self.isRunning }
        }
    }

    func remove() {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Every request finished so far.
    func requests() -> [Request] {
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasPrefix("requests.") }
        return files.flatMap { file -> [Request] in
            let text = (try? String(contentsOfFile: directory + "/" + file, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap { line in
                // A curl that printed nothing (it could not even start) still leaves a line,
                // and counts as failed: missing fields read as code 0.
                let f = line.split(separator: " ").map(String.init) + Array(repeating: "", count: 6)
                guard let start = Double(f[0]) else { return nil }
                return Request(start: start, curlExit: Int(f[1]) ?? -1, httpCode: Int(f[2]) ?? 0, bytes: Int(f[3]) ?? -1,
                               connectSeconds: Double(f[4]) ?? 0, totalSeconds: Double(f[5]) ?? 0)
            }
        }.sorted { $0.start < $1.start }
    }
}
