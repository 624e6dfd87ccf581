import API
import Client
import Foundation
import GodwitCore
import Lab

/// `lab up`'s trust step: every host trusts every other host and has it as a remote named
/// after it (h1, h2, ...), done through the daemons' own API exactly as a user would
/// (`trust add` on the server, `remote add` on the client), so labs exercise the real path.
enum LabTrust {
    /// Tokens only need to live through this loop; a short life limits a leaked one.
    static let tokenLifetime: Double = 300

    static func enrollAll(_ lab: Lab, port: Int = LabDaemons.httpsPort) async throws {
        for server in lab.hosts {
            let serverDaemon = GodwitClient(socket: server.daemonSocket)
            for client in lab.hosts where client.name != server.name {
                do {
                    let token = try await serverDaemon.createTrustToken(TrustTokenRequest(name: client.name,
                                                                                         lifetime: tokenLifetime))
                    _ = try await GodwitClient(socket: client.daemonSocket).addRemote(
                        RemoteAddRequest(name: server.name, url: "https://\(server.address):\(port)", token: token.token))
                } catch let error as GodwitError {
                    throw GodwitError("cannot make lab host \(client.name) a trusted client of \(server.name): \(error.message)",
                                      hint: error.hint ?? "see \(server.stateDirectory)/godwitd.log and \(client.stateDirectory)/godwitd.log",
                                      context: error.context)
                }
            }
        }
    }

    /// One line per host for `lab status`: its certificate and its remotes. Hosts whose
    /// daemon does not answer say so instead (status must work on broken labs).
    static func summary(_ status: LabStatus) async -> [String] {
        var lines: [String] = []
        for host in status.hosts {
            let daemon = GodwitClient(socket: host.stateDirectory + "/unix.socket")
            guard let info = try? await daemon.serverInfo() else {
                lines.append("\(host.endpoint.name): daemon not answering")
                continue
            }
            guard let fingerprint = info.certificateFingerprint else {
                lines.append("\(host.endpoint.name): no HTTPS listener")
                continue
            }
            let remotes = ((try? await daemon.remotes()) ?? []).map(\.name)
            lines.append("\(host.endpoint.name): https://\(info.httpsAddress ?? "?") certificate \(fingerprint.prefix(16))"
                         + ", remotes: \(remotes.isEmpty ? "none" : remotes.joined(separator: ", "))")
        }
        return lines
    }
}
