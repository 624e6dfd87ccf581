import Foundation
import GodwitCore

/// One PostgreSQL connection kept open from a network namespace (the lab's client),
/// inserting a row every few milliseconds: a `psql` fed through a fifo by a bash loop. Each
/// row psql printed back (`RETURNING v`) was committed by the server: an acknowledged row.
/// `ON_ERROR_STOP`: a lost connection or a failed statement ends psql with a non-zero exit
/// instead of reconnecting behind the test's back, and the backend pid is printed at the
/// start and the end, so "the same connection" is checked, not assumed.
///
/// Bounded like HTTPLoad: `seconds`, and a stop file; `stop()` kills the group if needed.
final class PostgresLoad {
    let directory: String
    private let pid: pid_t
    private var stopped = false

    static let table = "godwit_load"

    static let script = """
        # pgload.sh HOST DIR SECONDS INTERVAL
        host=$1 dir=$2 seconds=$3 interval=$4
        end=$(( EPOCHSECONDS + seconds ))
        mkfifo "$dir/in"
        stdbuf -oL psql -h "$host" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 -f "$dir/in" >"$dir/acks" 2>"$dir/psql.err" &
        psql=$!
        exec 3>"$dir/in"
        echo "SELECT 'backend ' || pg_backend_pid();" >&3
        i=0
        while (( EPOCHSECONDS < end )) && [[ ! -e $dir/stop ]] && kill -0 $psql 2>/dev/null; do
          i=$((i + 1))
          echo "INSERT INTO \(table)(v) VALUES ($i) RETURNING v;" >&3
          sleep "$interval"
        done
        echo "SELECT 'backend ' || pg_backend_pid();" >&3
        exec 3>&-
        wait $psql
        echo $? >"$dir/psql.exit"

        """

    init(netnsPath: String, host: String, seconds: Int, interval: Double = 0.005) throws {
        directory = "/tmp/gw-pgload-" + UUID().uuidString.prefix(8).lowercased()
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Self.script.write(toFile: directory + "/pgload.sh", atomically: true, encoding: .utf8)
        pid = try DetachedProcess.spawn(
            ["nsenter", "--net=" + netnsPath, "bash", directory + "/pgload.sh", host, directory, String(seconds),
             String(interval)],
            log: directory + "/load.log")
    }

    deinit { stop() }

    var isRunning: Bool { DetachedProcess.exitStatus(of: pid) == nil }

    /// Ends the insert loop, lets psql finish what it was sent, then kills what is left.
    func stop() {
        guard !stopped else { return }
        stopped = true
        _ = FileManager.default.createFile(atPath: directory + "/stop", contents: nil)
        if !poll(timeout: 60, { !self.isRunning }) {
            kill(-pid, SIGKILL)
            _ = poll(timeout: 5) { !self.isRunning }
        }
    }

    func remove() {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    private var lines: [Substring] {
        (HostEnvironment.read(directory + "/acks") ?? "").split(separator: "\n")
    }

    /// Row values the server acknowledged (psql's stdout is line-buffered: stdbuf).
    var acknowledged: [Int] { lines.compactMap { Int($0) } }
    /// The server pids psql talked to, at the start and at the end.
    var backends: [String] { lines.filter { $0.hasPrefix("backend ") }.map { String($0.dropFirst(8)) } }
    var exitStatus: Int? { HostEnvironment.read(directory + "/psql.exit").flatMap { Int($0) } }
    var errors: String { HostEnvironment.read(directory + "/psql.err") ?? "" }
}
