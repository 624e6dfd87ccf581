import Foundation

public enum OperationStatus: String, Codable, Sendable, CaseIterable {
    case pending = "Pending"
    case running = "Running"
    case success = "Success"
    case failure = "Failure"
    case cancelled = "Cancelled"

    public var isFinal: Bool { self == .success || self == .failure || self == .cancelled }
}

/// How far a long operation got, for progress lines ("copying rootfs 40%").
public struct OperationProgress: Codable, Sendable, Equatable {
    public var stage: String
    /// 0...100 when the work knows its total, else nil.
    public var percent: Int?
    public var processedBytes: UInt64?
    public var totalBytes: UInt64?
    /// The work's own measure of its rate and time left, when it has one (a move's engine
    /// does); clients compute them from processedBytes otherwise.
    public var bytesPerSecond: Double?
    public var etaSeconds: Double?

    public init(stage: String, percent: Int? = nil, processedBytes: UInt64? = nil, totalBytes: UInt64? = nil,
                bytesPerSecond: Double? = nil, etaSeconds: Double? = nil) {
        self.stage = stage; self.percent = percent
        self.processedBytes = processedBytes; self.totalBytes = totalBytes
        self.bytesPerSecond = bytesPerSecond; self.etaSeconds = etaSeconds
    }

    enum CodingKeys: String, CodingKey {
        case stage, percent
        case processedBytes = "processed_bytes"
        case totalBytes = "total_bytes"
        case bytesPerSecond = "bytes_per_second"
        case etaSeconds = "eta_seconds"
    }
}

/// Long work (launch, stop, delete, image build, later migration) runs as an operation
/// that the client follows, as in LXD's `/1.0/operations`.
public struct OperationInfo: Codable, Sendable, Equatable {
    public var id: String
    /// Always "task" for now (LXD also has "websocket" and "token").
    public var operationClass: String
    public var description: String
    public var status: OperationStatus
    public var progress: OperationProgress?
    /// The failure, shaped like an error response, when status is Failure.
    public var error: ErrorResponse?
    /// What the operation touches, e.g. ["containers": ["/1.0/containers/c1"]].
    public var resources: [String: [String]]
    public var createdAt: Date
    public var updatedAt: Date
    /// Result data, e.g. the container's pid after a start.
    public var metadata: [String: String]
    public var mayCancel: Bool

    public init(id: String, description: String, status: OperationStatus, progress: OperationProgress? = nil,
                error: ErrorResponse? = nil, resources: [String: [String]], createdAt: Date, updatedAt: Date,
                metadata: [String: String] = [:], mayCancel: Bool = true) {
        self.id = id; self.operationClass = "task"; self.description = description; self.status = status
        self.progress = progress; self.error = error; self.resources = resources
        self.createdAt = createdAt; self.updatedAt = updatedAt; self.metadata = metadata
        self.mayCancel = mayCancel
    }

    enum CodingKeys: String, CodingKey {
        case id, description, status, progress, error, resources, metadata
        case operationClass = "class"
        case createdAt = "created_at"
        case updatedAt = "updated_at"
        case mayCancel = "may_cancel"
    }
}

public enum EventType: String, Codable, Sendable, CaseIterable {
    case operation, logging, lifecycle
}

/// One line of `GET /1.0/events`.
public struct Event: Codable, Sendable, Equatable {
    public var type: EventType
    public var timestamp: Date
    /// operation events: the operation; lifecycle: action + source; logging: level + message.
    public var metadata: EventMetadata

    public init(type: EventType, timestamp: Date = Date(), metadata: EventMetadata) {
        self.type = type; self.timestamp = timestamp; self.metadata = metadata
    }
}

/// The union of what the three event types carry; unused fields stay absent in JSON.
public struct EventMetadata: Codable, Sendable, Equatable {
    public var operation: OperationInfo?
    /// lifecycle: e.g. "container-started", "container-stopped", "container-deleted".
    public var action: String?
    /// lifecycle: the resource, e.g. "/1.0/containers/c1".
    public var source: String?
    public var level: String?
    public var message: String?
    public var context: [String: String]?

    public init(operation: OperationInfo? = nil, action: String? = nil, source: String? = nil,
                level: String? = nil, message: String? = nil, context: [String: String]? = nil) {
        self.operation = operation; self.action = action; self.source = source
        self.level = level; self.message = message; self.context = context
    }
}

/// Every failed request answers with this body: the GodwitError's message, hint and context,
/// so the CLI prints the daemon's own words.
public struct ErrorResponse: Codable, Sendable, Equatable, Error {
    public var error: String
    public var errorCode: Int
    public var hint: String?
    /// Ordered [key, value] pairs, e.g. [["container", "c1"], ["operation", "..."]].
    public var context: [[String]]

    public init(error: String, errorCode: Int, hint: String? = nil, context: [[String]] = []) {
        self.error = error; self.errorCode = errorCode; self.hint = hint; self.context = context
    }

    enum CodingKeys: String, CodingKey {
        case error, hint, context
        case errorCode = "error_code"
    }
}

/// LXD's response envelope: `type` is "sync", "async" (metadata is the operation) or "error".
public struct ResponseEnvelope<Metadata: Codable & Sendable>: Codable, Sendable {
    public var type: String
    public var status: String
    public var statusCode: Int
    public var operation: String?
    public var metadata: Metadata?

    public init(type: String, status: String, statusCode: Int, operation: String? = nil, metadata: Metadata?) {
        self.type = type; self.status = status; self.statusCode = statusCode
        self.operation = operation; self.metadata = metadata
    }

    public static func sync(_ metadata: Metadata) -> Self {
        .init(type: "sync", status: "Success", statusCode: 200, metadata: metadata)
    }

    enum CodingKeys: String, CodingKey {
        case type, status, operation, metadata
        case statusCode = "status_code"
    }
}

public typealias AsyncResponse = ResponseEnvelope<OperationInfo>

extension ResponseEnvelope where Metadata == OperationInfo {
    public static func async(_ operation: OperationInfo) -> Self {
        .init(type: "async", status: "Operation created", statusCode: 100,
              operation: "/1.0/operations/\(operation.id)", metadata: operation)
    }
}

/// Shared coders: ISO 8601 dates, stable key order. Keys are spelled by CodingKeys, never by
/// a key strategy, because strategies would also rewrite config keys such as environment.FOO.
public enum APICoding {
    public static func encoder(pretty: Bool = false) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
                                          : [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}
