import Foundation

/// `GET /1.0`: who this daemon is and where it keeps its state.
public struct ServerInfo: Codable, Sendable, Equatable {
    public var apiVersion: String
    public var version: String
    public var hostName: String
    public var stateDir: String
    public var socket: String
    public var pid: Int32
    /// Which container driver runs containers ("runtime", or "fake" in tests).
    public var driver: String
    public var bridge: String?
    public var subnet: String?
    public var gateway: String?
    public var cgroupRoot: String?
    public var criu: String?
    public var startedAt: Date
    /// "ADDR:PORT" of the HTTPS listener for other daemons (`godwitd --https`); nil without one.
    public var httpsAddress: String?
    /// This daemon's certificate fingerprint (what remotes pin); nil without an HTTPS listener.
    public var certificateFingerprint: String?

    public init(apiVersion: String = "1.0", version: String, hostName: String, stateDir: String, socket: String,
                pid: Int32, driver: String, bridge: String?, subnet: String?, gateway: String?,
                cgroupRoot: String?, criu: String?, startedAt: Date,
                httpsAddress: String? = nil, certificateFingerprint: String? = nil) {
        self.apiVersion = apiVersion; self.version = version; self.hostName = hostName
        self.stateDir = stateDir; self.socket = socket; self.pid = pid; self.driver = driver
        self.bridge = bridge; self.subnet = subnet; self.gateway = gateway
        self.cgroupRoot = cgroupRoot; self.criu = criu; self.startedAt = startedAt
        self.httpsAddress = httpsAddress; self.certificateFingerprint = certificateFingerprint
    }

    enum CodingKeys: String, CodingKey {
        case version, driver, bridge, subnet, gateway, criu, pid, socket
        case apiVersion = "api_version"
        case hostName = "host_name"
        case stateDir = "state_dir"
        case cgroupRoot = "cgroup_root"
        case startedAt = "started_at"
        case httpsAddress = "https_address"
        case certificateFingerprint = "certificate_fingerprint"
    }
}

public enum GodwitVersion {
    public static let current = "0.1.0"
}
