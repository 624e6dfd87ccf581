import Foundation
import GodwitCore

/// What exists of a lab right now, found by name alone (no state file needed): the basis
/// for refusing a second `up` and for `down` after a crash.
public struct LabLeftovers: Codable, Sendable, Equatable {
    public var namespaces: [String]
    public var cgroups: [String]
    /// The lab's state directory, if it exists.
    public var stateDirectory: String?

    public var isEmpty: Bool { namespaces.isEmpty && cgroups.isEmpty && stateDirectory == nil }

    public static func find(_ name: LabName, stateRoot: String = LabPaths.stateRoot,
                            hierarchies: CgroupLayout = .lab()) -> LabLeftovers {
        let directory = LabPaths.labDirectory(name, stateRoot: stateRoot)
        return LabLeftovers(
            namespaces: LabNamespace.list().filter { name.owns(netns: $0) },
            cgroups: LabCgroups.existing(of: name, in: hierarchies),
            stateDirectory: FileManager.default.fileExists(atPath: directory) ? directory : nil)
    }
}

/// What `lab down` removed.
public struct LabTeardownReport: Codable, Sendable {
    public var name: LabName
    public var removed: LabLeftovers

    public var removedAnything: Bool { !removed.isEmpty }
}

extension Lab {
    /// Builds a lab: namespaces, links, shaping, cgroups, state directories and lab.json.
    /// Refuses when anything of a lab with this name exists; if a step fails, removes
    /// everything it built before reporting the failure.
    public static func create(name: LabName, hosts count: Int, bandwidth: Bandwidth? = nil,
                              stateRoot: String = LabPaths.stateRoot,
                              hierarchies: CgroupLayout = .lab()) throws -> Lab {
        try validate(hostCount: count)
        try HostEnvironment.requireRoot(for: "creating a lab")
        let existing = LabLeftovers.find(name, stateRoot: stateRoot, hierarchies: hierarchies)
        if !existing.namespaces.isEmpty {
            throw GodwitError("lab '\(name)' already exists (network namespaces \(existing.namespaces.joined(separator: ", ")))",
                              hint: "remove it with `godwit lab down --name \(name)`, or choose another --name")
        }
        if !existing.isEmpty {
            var parts = existing.cgroups.first.map { ["\(existing.cgroups.count) cgroup(s) such as \($0)"] } ?? []
            parts += existing.stateDirectory.map { ["state directory \($0)"] } ?? []
            throw GodwitError("leftovers of an earlier lab '\(name)' exist: \(parts.joined(separator: ", "))",
                              hint: "remove them with `godwit lab down --name \(name)`, or choose another --name")
        }
        var lab = try plan(name: name, hosts: count, stateRoot: stateRoot, cgroups: hierarchies, bandwidth: bandwidth)
        lab.createdAt = ISO8601DateFormatter().string(from: Date())
        do {
            try lab.build()
        } catch {
            var failure = GodwitError.wrap(error, doing: "creating lab '\(name)'")
            do {
                try destroy(name: name, stateRoot: stateRoot, hierarchies: hierarchies)
            } catch {
                failure = failure.with("cleanup also failed", "\(error)")
            }
            throw failure
        }
        return lab
    }

    private func build() throws {
        // The marker goes first so a crash at any later point leaves a directory `down`
        // recognises as a lab's.
        try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true)
        try Data().write(to: URL(fileURLWithPath: stateDirectory + "/" + LabPaths.markerFile))
        try LabNetwork.build(self)
        if let initialBandwidth {
            for host in hosts {
                try LabShaper.apply(.limited(initialBandwidth), to: host.endpoint, in: self)
            }
        }
        for host in hosts {
            try LabCgroups.create(host.cgroups)
            try FileManager.default.createDirectory(atPath: host.stateDirectory, withIntermediateDirectories: true)
        }
        try save()
    }

    public var descriptionPath: String { stateDirectory + "/" + LabPaths.descriptionFile }

    public func save() throws {
        let json = try JSONOutput.encode(self)
        try Data(json.utf8).write(to: URL(fileURLWithPath: descriptionPath), options: .atomic)
    }

    /// The running lab: lab.json when present, else derived from its namespaces.
    public static func load(name: LabName, stateRoot: String = LabPaths.stateRoot) throws -> Lab {
        let namespaces = LabNamespace.list().filter { name.owns(netns: $0) }
        guard namespaces.contains(name.fabricNetns) else {
            if namespaces.isEmpty && LabLeftovers.find(name, stateRoot: stateRoot).isEmpty {
                throw GodwitError("no lab named '\(name)'",
                                  hint: "create it with `godwit lab up --name \(name)`; `godwit lab status` lists labs")
            }
            throw GodwitError("lab '\(name)' is not running (its fabric namespace \(name.fabricNetns) is gone, e.g. after a reboot)",
                              hint: "run `godwit lab down --name \(name)`, then `godwit lab up --name \(name)`")
        }
        let path = LabPaths.labDirectory(name, stateRoot: stateRoot) + "/" + LabPaths.descriptionFile
        if let data = FileManager.default.contents(atPath: path) {
            if let lab = try? JSONDecoder().decode(Lab.self, from: data), lab.name == name { return lab }
        }
        let hostCount = namespaces.compactMap { LabHost.index(of: String($0.dropFirst(name.netnsPrefix.count))) }.max() ?? 0
        return try plan(name: name, hosts: max(hostCount, 1), stateRoot: stateRoot)
    }

    /// Sets the rate of a host's (or the client's) fabric link; `.unlimited` removes shaping.
    public func shape(_ endpointName: String, to rate: LinkRate) throws {
        let endpoint = try endpoint(named: endpointName)
        guard LabNamespace.exists(endpoint.netns) else {
            throw GodwitError("\(endpoint.name) of lab '\(name)' has no network namespace (\(endpoint.netns))",
                              hint: "recreate the lab: `godwit lab down --name \(name)` and `godwit lab up --name \(name)`")
        }
        try LabShaper.apply(rate, to: endpoint, in: self)
    }

    /// Removes everything of lab `name`, found by name: kills the processes in its cgroups
    /// and namespaces, removes the cgroups deepest first, the namespaces and the state
    /// directory. Keeps going past a failed step so one stuck piece doesn't strand the rest.
    @discardableResult
    public static func destroy(name: LabName, stateRoot: String = LabPaths.stateRoot,
                               hierarchies: CgroupLayout = .lab()) throws -> LabTeardownReport {
        try HostEnvironment.requireRoot(for: "removing a lab")
        let found = LabLeftovers.find(name, stateRoot: stateRoot, hierarchies: hierarchies)
        var failures: [String] = []
        var removed = LabLeftovers(namespaces: [], cgroups: [], stateDirectory: nil)
        // Daemons first, so none of them reacts to its containers dying below.
        LabDaemons.stop(labDirectory: LabPaths.labDirectory(name, stateRoot: stateRoot))
        do {
            removed.cgroups = try LabCgroups.remove(lab: name, hierarchies: hierarchies)
        } catch {
            failures.append("\(error)")
        }
        for netns in found.namespaces {
            do {
                try LabNamespace.delete(netns)
                removed.namespaces.append(netns)
            } catch {
                failures.append("\(error)")
            }
        }
        if let directory = found.stateDirectory {
            do {
                try removeStateDirectory(directory)
                removed.stateDirectory = directory
            } catch {
                failures.append("\(error)")
            }
        }
        if !failures.isEmpty {
            throw GodwitError("lab '\(name)' was only partly removed: \(failures.joined(separator: "; "))",
                              hint: "fix the cause above and run `godwit lab down --name \(name)` again")
        }
        return LabTeardownReport(name: name, removed: removed)
    }

    /// Refuses to delete a directory that isn't recognisably a lab's: GODWIT_LAB_ROOT could
    /// point anywhere, and lab names like "usr" are valid.
    static func removeStateDirectory(_ directory: String) throws {
        let fm = FileManager.default
        let entries = (try? fm.contentsOfDirectory(atPath: directory)) ?? []
        let looksLikeLab = entries.contains(LabPaths.markerFile)
            || entries.allSatisfy { $0 == LabPaths.descriptionFile || LabHost.index(of: $0) != nil }
        guard looksLikeLab else {
            throw GodwitError("not deleting \(directory): it has no \(LabPaths.markerFile) marker, so it may not be a lab's",
                              hint: "check \(LabPaths.rootVariable) and delete the directory by hand if it is a leftover")
        }
        try LabMounts.unmountAll(under: directory)
        do {
            try fm.removeItem(atPath: directory)
        } catch {
            throw GodwitError("cannot delete \(directory): \(error.localizedDescription)",
                              hint: "check what holds it (`fuser -vm \(directory)`), then delete it by hand")
        }
    }
}

/// Every lab on this machine, found by name in namespaces, cgroups and the state root.
public enum LabInventory {
    public static func names(stateRoot: String = LabPaths.stateRoot,
                             hierarchies: CgroupLayout = .lab()) -> [LabName] {
        var names = Set<LabName>()
        for netns in LabNamespace.list() where netns.hasPrefix("godwit-") {
            if let name = try? LabName(String(netns.dropFirst("godwit-".count).prefix(while: { $0 != "-" }))),
               name.owns(netns: netns) {
                names.insert(name)
            }
        }
        for root in hierarchies.mountPoints {
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [] where entry.hasPrefix("godwit-") {
                if let name = try? LabName(String(entry.dropFirst("godwit-".count).prefix(while: { $0 != "-" }))),
                   LabCgroups.isHostCgroup(entry, of: name) {
                    names.insert(name)
                }
            }
        }
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: stateRoot)) ?? [] {
            if let name = try? LabName(entry),
               FileManager.default.fileExists(atPath: LabPaths.labDirectory(name, stateRoot: stateRoot) + "/" + LabPaths.markerFile) {
                names.insert(name)
            }
        }
        return names.sorted()
    }
}
