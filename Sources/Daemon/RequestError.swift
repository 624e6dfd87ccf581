import API
import GodwitCore
import Trust

/// A GodwitError with the HTTP status it deserves. Routes throw these; anything else that
/// escapes a handler is the daemon's fault and becomes a 500 with the error's own words.
public struct RequestError: Error, CustomStringConvertible, Sendable {
    public var status: Int
    public var error: GodwitError

    public init(_ status: Int, _ error: GodwitError) { self.status = status; self.error = error }

    public static func badRequest(_ error: GodwitError) -> RequestError { RequestError(400, error) }
    public static func notFound(_ error: GodwitError) -> RequestError { RequestError(404, error) }
    public static func conflict(_ error: GodwitError) -> RequestError { RequestError(409, error) }

    public var description: String { error.description }

    public func with(_ key: String, _ value: String) -> RequestError { RequestError(status, error.with(key, value)) }

    /// Validation errors (ConfigKey, ContainerName) are the client's fault.
    public static func validating<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let error as GodwitError { throw RequestError.badRequest(error) }
    }

    public static func response(for error: any Error) -> ErrorResponse {
        switch error {
        case let error as RequestError:
            return ErrorResponse(error.error, code: error.status)
        case let error as TrustError:
            // The trust layer's decisions (403 bad token, 404 unknown remote, 409 name taken).
            return ErrorResponse(error.error, code: error.status)
        case let error as GodwitError:
            return ErrorResponse(error, code: 500)
        case let error as DecodingError:
            return ErrorResponse(error: "invalid request body: \(Self.describe(error))", errorCode: 400,
                                 hint: "see the API types in Sources/API")
        case is CancellationError:
            return ErrorResponse(error: "cancelled", errorCode: 500)
        default:
            return ErrorResponse(error: "\(error)", errorCode: 500)
        }
    }

    static func describe(_ error: DecodingError) -> String {
        switch error {
        case .keyNotFound(let key, _): return "missing field '\(key.stringValue)'"
        case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context):
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            return path.isEmpty ? context.debugDescription : "field '\(path)': \(context.debugDescription)"
        @unknown default: return "\(error)"
        }
    }
}

extension ErrorResponse {
    public init(_ error: GodwitError, code: Int) {
        self.init(error: error.message, errorCode: code, hint: error.hint, context: error.context.map { [$0.0, $0.1] })
    }
}

extension GodwitError {
    static func noSuchContainer(_ name: String) -> RequestError {
        .notFound(GodwitError("container '\(name)' not found", hint: "`godwit list` shows the containers"))
    }
}
