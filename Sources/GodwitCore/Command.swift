import Foundation

/// Result of running an external program to completion.
public struct CommandResult: Sendable {
    public var argv: [String]
    public var status: Int32
    public var stdout: String
    public var stderr: String
    public var succeeded: Bool { status == 0 }

    /// The last non-empty line of stderr (or stdout): usually the one that explains a failure.
    public var lastErrorLine: String {
        let lines = (stderr.isEmpty ? stdout : stderr).split(separator: "\n").map(String.init)
        return lines.last(where: { !$0.trimmingCharacters(in: .whitespaces).isEmpty }) ?? ""
    }
}

/// Runs external programs (ip, tc, nsenter, criu, rsync...). One place so that every
/// failure message names the command and its stderr, and so that no caller forks by hand.
public enum Command {
    /// Runs argv[0] (looked up in PATH when it has no slash) and waits for it.
    @discardableResult
    public static func run(_ argv: [String], input: String? = nil,
                           environment: [String: String]? = nil) throws -> CommandResult {
        precondition(!argv.isEmpty)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try resolve(argv[0]))
        process.arguments = Array(argv.dropFirst())
        if let environment { process.environment = environment }
        let outPipe = Pipe(), errPipe = Pipe()
        process.standardOutput = outPipe
        process.standardError = errPipe
        let inPipe: Pipe? = input == nil ? nil : Pipe()
        process.standardInput = inPipe ?? FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            throw GodwitError("cannot start \(argv[0]): \(error.localizedDescription)",
                              hint: "install it (make setup) or check PATH")
        }
        if let inPipe, let input {
            inPipe.fileHandleForWriting.write(Data(input.utf8))
            try? inPipe.fileHandleForWriting.close()
        }
        // Read both pipes concurrently: a child that fills one pipe while we block on the
        // other would deadlock. The stderr reader hands its bytes over through a Locked
        // (written once, read after the group says it is done).
        let errBox = Locked(Data())
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            let data = errPipe.fileHandleForReading.readDataToEndOfFile()
            errBox.value = data
            group.leave()
        }
        let outData = outPipe.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        let errData = errBox.value
        process.waitUntilExit()
        return CommandResult(argv: argv, status: process.terminationStatus,
                             stdout: String(decoding: outData, as: UTF8.self),
                             stderr: String(decoding: errData, as: UTF8.self))
    }

    /// Like `run`, but a non-zero exit becomes a GodwitError naming the command and its stderr.
    @discardableResult
    public static func check(_ argv: [String], input: String? = nil, hint: String? = nil,
                             environment: [String: String]? = nil) throws -> CommandResult {
        let result = try run(argv, input: input, environment: environment)
        guard result.succeeded else {
            throw GodwitError("`\(argv.joined(separator: " "))` failed (exit \(result.status)): \(result.lastErrorLine)",
                              hint: hint)
        }
        return result
    }

    /// Finds an executable in PATH (plus the sbin directories, which a non-login root shell may lack).
    public static func resolve(_ name: String) throws -> String {
        if name.contains("/") { return name }
        if let found = which(name) { return found }
        throw GodwitError("`\(name)` not found in PATH", hint: "run `make setup` to install what Godwit needs")
    }

    public static func which(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let dirs = path.split(separator: ":").map(String.init) + ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        for dir in dirs where !dir.isEmpty {
            let candidate = dir + "/" + name
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }
}
