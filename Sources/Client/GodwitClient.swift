import API
import AsyncHTTPClient
import Foundation
import GodwitCore
import NIOCore

/// The CLI's side of the REST API: godwitd's unix socket, LXD-style envelopes unwrapped,
/// errors turned back into GodwitErrors with the daemon's message, hint and context.
public struct GodwitClient: Sendable {
    public let socket: String

    public init(socket: String) { self.socket = socket }

    /// The daemon of a state directory (`--dir`, GODWIT_DIR, or /var/lib/godwit).
    public init(stateDir: String) {
        self.init(socket: URL(fileURLWithPath: stateDir).appendingPathComponent("unix.socket").path)
    }

    public static func defaultStateDir(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        environment["GODWIT_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/var/lib/godwit"
    }

    // MARK: transport

    public enum Method: String, Sendable { case GET, POST, PUT, PATCH, DELETE }

    /// One request; returns the status and body. Connection failures become the
    /// "cannot reach godwitd" error, with how to start it.
    func send(_ method: Method, _ path: String, body: (any Encodable)? = nil,
              timeout: TimeAmount = .seconds(120)) async throws -> (status: Int, body: Data) {
        try checkReachable()
        var request = HTTPClientRequest(url: try url(path))
        request.method = .init(rawValue: method.rawValue)
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try APICoding.encoder().encode(body)))
        }
        let response: HTTPClientResponse
        do {
            response = try await HTTPClient.shared.execute(request, timeout: timeout)
        } catch {
            throw unreachable(error)
        }
        let data = try await response.body.collect(upTo: 64 << 20)
        return (Int(response.status.code), Data(data.readableBytesView))
    }

    /// A plain connect() first: AsyncHTTPClient retries a refused connection until the
    /// request's deadline, which for a missing daemon would mean minutes of silence.
    func checkReachable() throws {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw GodwitError.errno("socket(AF_UNIX)") }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard socket.utf8.count < capacity else {
            throw GodwitError("socket path too long (\(socket.utf8.count) bytes, at most \(capacity - 1)): \(socket)",
                              hint: "use a shorter --dir")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: socket.utf8)
            raw[socket.utf8.count] = 0
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if result != 0 {
            let code = errno
            let reason = code == ENOENT ? "no socket" : code == ECONNREFUSED ? "connection refused, no daemon listening"
                                                      : String(cString: strerror(code))
            throw unreachable(reason)
        }
    }

    func url(_ path: String) throws -> String {
        guard let url = URL(httpURLWithSocketPath: socket, uri: path) else {
            throw GodwitError("cannot make a request URL for socket \(socket) and path \(path)")
        }
        return url.absoluteString
    }

    func unreachable(_ error: any Error) -> GodwitError { unreachable(Self.describe(error)) }

    func unreachable(_ reason: String) -> GodwitError {
        let stateDir = URL(fileURLWithPath: socket).deletingLastPathComponent().path
        return GodwitError("cannot reach godwitd at \(socket) (\(reason))",
                           hint: "start it with `godwitd --state-dir \(stateDir) &` (or `godwit lab up` for lab hosts), or point --dir/GODWIT_DIR at the right state directory")
    }

    static func describe(_ error: any Error) -> String {
        let text = String(describing: error)
        if text.contains("connectTimeout") { return "connection timed out" }
        if text.contains("No such file") || text.contains("errno: 2") { return "no socket" }
        if text.contains("Connection refused") || text.contains("errno: 111") { return "connection refused" }
        return text.count > 160 ? String(text.prefix(160)) + "..." : text
    }

    /// Decodes a sync response's metadata, or throws the error response as a GodwitError.
    func call<T: Decodable & Sendable & Encodable>(_ method: Method, _ path: String, body: (any Encodable)? = nil,
                                                     as type: T.Type = T.self, timeout: TimeAmount = .seconds(120)) async throws -> T {
        let (status, data) = try await send(method, path, body: body, timeout: timeout)
        try Self.checkStatus(status, data)
        do {
            let envelope = try APICoding.decoder().decode(ResponseEnvelope<T>.self, from: data)
            guard let metadata = envelope.metadata else { throw GodwitError("the daemon's answer has no metadata") }
            return metadata
        } catch let error as DecodingError {
            throw GodwitError("cannot understand godwitd's answer to \(method.rawValue) \(path): \(error)",
                              hint: "are godwit and godwitd the same version?")
        }
    }

    static func checkStatus(_ status: Int, _ data: Data) throws {
        guard status >= 400 else { return }
        if let failure = try? APICoding.decoder().decode(ErrorResponse.self, from: data) {
            throw GodwitError(failure)
        }
        throw GodwitError("godwitd answered HTTP \(status): \(String(decoding: data.prefix(300), as: UTF8.self))")
    }

    static func escape(_ component: String) -> String {
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove(charactersIn: "/?#")
        return component.addingPercentEncoding(withAllowedCharacters: allowed) ?? component
    }

    /// "1e+17" must arrive as itself: a bare '+' in a query may be read as a space.
    static func escapeQueryValue(_ value: String) -> String {
        var allowed = CharacterSet.urlQueryAllowed
        allowed.remove(charactersIn: "+&=#")
        return value.addingPercentEncoding(withAllowedCharacters: allowed) ?? value
    }
}

extension GodwitError {
    /// The daemon's error, in the same shape the CLI prints its own.
    public init(_ response: ErrorResponse) {
        self.init(response.error, hint: response.hint,
                  context: response.context.compactMap { $0.count == 2 ? ($0[0], $0[1]) : nil })
    }
}
