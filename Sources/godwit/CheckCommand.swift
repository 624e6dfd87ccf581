import API
import ArgumentParser
import Client
import Foundation
import GodwitCore
import HostCheck


/// The talk's "pre-copy support check", generalised: what this host can do, measured.
struct CheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Measure what this host supports for containers and each migration strategy.",
        discussion: "Every capability is exercised (a page is written and tracked, namespaces are created, CRIU is asked, an idmapped mount is made on the file system of --dir's images), not read from kernel config. Exits non-zero only when this host cannot run containers at all.")

    @Option(name: .shortAndLong, help: "Output format: human or json.")
    var format: OutputFormat = .human

    @Option(help: "CRIU binary to use (default: $GODWIT_CRIU, then the one `make setup` provisioned, then PATH).")
    var criu: String?

    @Option(help: ArgumentHelp("Instead: measure the link to this remote and say whether a container's address stays reachable when it moves there.",
                               valueName: "remote"))
    var peer: String?

    @Argument(help: ArgumentHelp("Instead: say what would make a checkpoint (and so a live move) of this running container fail now, with CRIU's reason.",
                                 valueName: "container"))
    var container: String?

    @OptionGroup var daemon: DaemonOptions

    func run() async throws {
        if let container {
            var blocked = false
            try await CLI.run {
                let check = try await daemon.client.checkpointCheck(container)
                blocked = !check.checkpointable
                switch format {
                case .json: try CLI.printJSON(check)
                case .human:
                    if check.blockers.isEmpty {
                        print("\(check.name): nothing in its \(check.processes) processes stops a checkpoint now")
                    } else {
                        print("\(check.name): \(check.blockers.count) thing(s) would make CRIU refuse to dump it:")
                        for b in check.blockers {
                            print("  \(b.kind): pid \(b.pid) (\(b.command)): \(b.detail)\n    CRIU: \(b.criuLine)")
                        }
                    }
                }
            }
            if blocked { throw ExitCode(1) }
            return
        }
        if let peer {
            try await CLI.run {
                let report = try await daemon.client.remoteLink(peer)
                switch format {
                case .json: try CLI.printJSON(report)
                case .human: print(Self.render(report))
                }
            }
            return
        }
        let report = HostProbe.run(criuSetting: criu, stateDirectory: daemon.stateDir)
        switch format {
        case .json: print(try JSONOutput.encode(report))
        case .human: print(CheckCommand.render(report))
        }
        guard report.canRunContainers else {
            throw GodwitError("this host cannot run containers",
                              hint: report.root ? "see the namespaces and cgroups lines above" : "run `godwit check` as root")
        }
    }

    static func render(_ r: PeerLinkReport) -> String {
        func network(_ n: NetworkInfo?) -> String {
            guard let n else { return "none" }
            return "\(n.name) (\(n.mode)\(n.address.map { ", \($0)" } ?? "")\(n.containers.map { ", containers from \($0)" } ?? ""))"
        }
        var out = "Link to \(r.remote): round trip \(String(format: "%.2f", r.roundTripMillis)) ms, "
            + "\(String(format: "%.0f", r.throughputMbitPerSecond)) Mbit/s (\(r.probeBytes >> 20) MiB over HTTPS)\n"
        out += "Network here: \(network(r.local))\nNetwork on \(r.remote): \(network(r.peer))\n"
        out += "Addresses move with containers: \(r.addressesPortable ? "yes" : "no"): \(r.reason)\n"
        for warning in r.warnings { out += "warning: \(warning)\n" }
        return out
    }

    static func render(_ u: UnprivilegedReport) -> String {
        func mark(_ p: ProbeResult) -> String { p.available ? "yes" : "no" }
        var table = TextTable(header: ["Unprivileged containers", u.supported ? "yes" : "no", "measured"])
        table.add(["user namespaces", mark(u.userNamespaces), u.userNamespaces.detail])
        table.add(["idmapped mounts", mark(u.idmappedMounts), u.idmappedMounts.detail])
        table.add(["subordinate ids", mark(u.subordinateRange.usable), u.subordinateRange.usable.detail])
        table.add(["lazy moves", mark(u.userfaultfd), u.userfaultfd.detail])
        var out = table.render()
        for warning in u.warnings { out += "\nwarning: \(warning)" }
        if !u.supported { out += "\nUntil these work, only containers launched with -c security.privileged=true start here." }
        return out
    }

    static func render(_ r: HostReport) -> String {
        func mark(_ p: ProbeResult) -> String { p.available ? "yes" : "no" }
        var out = "Host \(r.hostname): Linux \(r.kernel) (\(r.architecture))\(r.root ? ", root" : ", NOT root: most probes need root")\n\n"

        var criu = TextTable()
        let where_ = r.criu.path.map { "\($0) (\(r.criu.source ?? "?"))" } ?? "not found"
        criu.add(["CRIU", r.criu.version ?? "-", where_])
        criu.add(["  criu check", mark(r.criu.usable), r.criu.usable.detail])
        criu.add(["  lazy pages", mark(r.criu.lazyPages), r.criu.lazyPages.detail])
        out += criu.render() + "\n\n"

        var kernel = TextTable(header: ["Kernel feature", "", "measured"])
        let m = r.memory
        for (name, probe) in [("soft-dirty", m.softDirty), ("userfaultfd", m.userfaultfd), ("PAGEMAP_SCAN", m.pagemapScan),
                              ("ptrace injection", m.ptrace), ("pidfd_getfd", m.pidfdGetfd),
                              ("uffd-wp tracking", m.uffdWriteProtectTracking), ("process_vm_readv", m.processVMReadv),
                              ("namespaces", r.namespaces), ("nftables lock", r.nftables), ("4 MiB pipes", r.pipeSize)] {
            kernel.add([name, mark(probe), probe.detail])
        }
        kernel.add(["cgroups", r.cgroups.available ? "yes" : "no", "\(r.cgroups.kind); freezer: \(r.cgroups.freezer)"])
        out += kernel.render() + "\n\n"

        out += render(r.unprivileged) + "\n\n"

        out += "Dirty tracker for pre-copy: \(r.dirtyTracker?.rawValue ?? "none")\n\n"
        var strategies = TextTable(header: ["Strategy", "as source", "as destination"])
        var reasons: [String] = []
        for s in r.strategies {
            strategies.add([s.strategy.rawValue, mark(s.source), mark(s.destination)])
            if !s.source.available { reasons.append("  \(s.strategy.rawValue) as source: \(s.source.detail)") }
            if !s.destination.available { reasons.append("  \(s.strategy.rawValue) as destination: \(s.destination.detail)") }
        }
        out += strategies.render()
        if !reasons.isEmpty { out += "\n\nUnavailable:\n" + reasons.joined(separator: "\n") }
        return out
    }
}
