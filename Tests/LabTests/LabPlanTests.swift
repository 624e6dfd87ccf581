import Foundation
import GodwitCore
import Testing
@testable import Lab

@Suite struct LabNameTests {
    @Test(arguments: ["lab", "a", "lab2", "abcdefgh", "x0"])
    func acceptsShortLowercaseNames(text: String) throws {
        #expect(try LabName(text).rawValue == text)
    }

    @Test(arguments: ["", "Lab", "1lab", "lab-x", "abcdefghi", "lab_1", "labé", " lab"])
    func rejectsOthers(text: String) {
        let error = #expect(throws: GodwitError.self) { try LabName(text) }
        #expect(error?.hint?.contains("lowercase") == true)
    }

    @Test func namesEverythingAfterTheLab() throws {
        let name = try LabName("lab")
        #expect(name.fabricNetns == "godwit-lab-fabric")
        #expect(name.clientNetns == "godwit-lab-client")
        #expect(name.hostNetns(3) == "godwit-lab-h3")
        #expect(name.hostCgroup(12) == "godwit-lab-h12")
    }

    @Test func oneLabsPrefixNeverMatchesAnother() throws {
        let lab = try LabName("lab"), lab2 = try LabName("lab2")
        #expect(!lab2.fabricNetns.hasPrefix(lab.netnsPrefix))
        #expect(LabCgroups.isHostCgroup("godwit-lab-h1", of: lab))
        #expect(!LabCgroups.isHostCgroup("godwit-lab2-h1", of: lab))
        #expect(!LabCgroups.isHostCgroup("godwit-lab-fabric", of: lab))
        #expect(!LabCgroups.isHostCgroup("godwit-lab-h1x", of: lab))
        #expect(lab.owns(netns: "godwit-lab-fabric") && lab.owns(netns: "godwit-lab-h16") && lab.owns(netns: "godwit-lab-client"))
        #expect(!lab.owns(netns: "godwit-lab-6711b83c") && !lab.owns(netns: "godwit-lab2-h1"))
    }

    @Test func hostIndexRoundTrips() {
        #expect(LabHost.index(of: "h1") == 1)
        #expect(LabHost.index(of: "h16") == 16)
        for bad in ["h", "h0", "h01", "x1", "h-1", "client", "h1 "] {
            #expect(LabHost.index(of: bad) == nil, "\(bad)")
        }
    }
}

@Suite struct LabPlanTests {
    let hybrid = CgroupLayout(v1: ["cpu": "/cg/cpu,cpuacct", "cpuacct": "/cg/cpu,cpuacct", "freezer": "/cg/freezer"],
                             unified: "/cg/unified")

    @Test func addressesAndPaths() throws {
        let lab = try Lab.plan(name: LabName("lab"), hosts: 3, stateRoot: "/tmp/labs/", cgroups: hybrid)
        #expect(lab.network == "10.77.0.0/16")
        #expect(lab.client.address == "10.77.0.2")
        #expect(lab.client.netnsPath == "/run/netns/godwit-lab-client")
        #expect(lab.hosts.map(\.address) == ["10.77.0.11", "10.77.0.12", "10.77.0.13"])
        #expect(lab.hosts.map(\.containerSubnet) == ["10.77.1.0/24", "10.77.2.0/24", "10.77.3.0/24"])
        #expect(lab.stateDirectory == "/tmp/labs/lab")
        let h2 = lab.hosts[1]
        #expect(h2.name == "h2" && h2.netns == "godwit-lab-h2" && h2.netnsPath == "/run/netns/godwit-lab-h2")
        #expect(h2.bridge == "br0" && h2.endpoint.uplink == "uplink" && h2.endpoint.fabricPort == "h2")
        #expect(h2.stateDirectory == "/tmp/labs/lab/h2")
        #expect(h2.firstContainerAddress == "10.77.2.1" && h2.lastContainerAddress == "10.77.2.254")
        #expect(h2.containerPrefixLength == 16)
        #expect(h2.cgroups.name == "godwit-lab-h2")
        #expect(h2.daemonSocket == "/tmp/labs/lab/h2/unix.socket")
        #expect(LabPaths.daemonDirectory("lab/h2") == LabPaths.stateRoot + "/lab/h2")
        #expect(LabPaths.daemonDirectory("/var/lib/godwit") == "/var/lib/godwit")
        #expect(LabPaths.daemonDirectory("Bad/h1") == "Bad/h1")
        #expect(h2.cgroups.v1["freezer"] == "/cg/freezer/godwit-lab-h2")
        #expect(h2.cgroups.unified == "/cg/unified/godwit-lab-h2")
        // cpu and cpuacct share one directory: created and removed once
        #expect(h2.cgroups.directories == ["/cg/cpu,cpuacct/godwit-lab-h2", "/cg/freezer/godwit-lab-h2", "/cg/unified/godwit-lab-h2"])
        #expect(h2.endpoint.command(["ping", "-c1", "10.77.0.2"])
                == ["nsenter", "--net=/run/netns/godwit-lab-h2", "ping", "-c1", "10.77.0.2"])
    }

    @Test func everyAddressIsDistinctAtTheLimit() throws {
        let lab = try Lab.plan(name: LabName("big"), hosts: Lab.maxHosts, cgroups: hybrid)
        let addresses = lab.endpoints.map(\.address)
        #expect(Set(addresses).count == Lab.maxHosts + 1)
        #expect(Set(lab.hosts.map(\.containerSubnet)).count == Lab.maxHosts)
    }

    @Test func tooManyHosts() {
        let error = #expect(throws: GodwitError.self) { try Lab.plan(name: LabName("lab"), hosts: 17, cgroups: hybrid) }
        #expect(error?.message.contains("too many hosts") == true)
        #expect(throws: GodwitError.self) { try Lab.plan(name: LabName("lab"), hosts: 0, cgroups: hybrid) }
    }

    @Test func findsHostsAndClientByName() throws {
        let lab = try Lab.plan(name: LabName("lab"), hosts: 2, cgroups: hybrid)
        #expect(try lab.host(named: "h2").index == 2)
        #expect(try lab.host(named: "2").index == 2)
        #expect(try lab.endpoint(named: "client").address == "10.77.0.2")
        let error = #expect(throws: GodwitError.self) { try lab.endpoint(named: "h3") }
        #expect(error?.hint?.contains("h1, h2") == true)
    }

    @Test func descriptionRoundTripsThroughJSON() throws {
        var lab = try Lab.plan(name: LabName("lab"), hosts: 2, cgroups: hybrid, bandwidth: Bandwidth(bitsPerSecond: 1_000_000_000))
        lab.createdAt = "2026-01-02T03:04:05Z"
        let decoded = try JSONDecoder().decode(Lab.self, from: Data(try JSONOutput.encode(lab).utf8))
        #expect(decoded.name == lab.name && decoded.hosts == lab.hosts && decoded.client == lab.client)
        #expect(decoded.initialBandwidth == lab.initialBandwidth && decoded.createdAt == lab.createdAt)
        #expect(try JSONOutput.encode(lab).contains("\"name\" : \"lab\""))
    }

    @Test func badNameInJSONIsRejected() {
        #expect(throws: (any Error).self) { try JSONDecoder().decode(LabName.self, from: Data("\"Bad-Name\"".utf8)) }
    }
}

@Suite struct CgroupHierarchyTests {
    @Test func hybridHost() throws {
        let mountinfo = """
            31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
            32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
            34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
            37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
            38 31 0:35 / /sys/fs/cgroup/net_cls rw,relatime - cgroup cgroup rw,net_cls
            40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
            """
        let found = try CgroupLayout.detect(mountinfo: mountinfo)
        #expect(found.kind == .hybrid)
        #expect(found.v1 == ["cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
                             "cpuset": "/sys/fs/cgroup/cpuset", "freezer": "/sys/fs/cgroup/freezer",
                             "net_cls": "/sys/fs/cgroup/net_cls", "name=systemd": "/sys/fs/cgroup/systemd"])
        #expect(found.unified == "/sys/fs/cgroup/unified")
        #expect(found.mountPoints == ["/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpuset", "/sys/fs/cgroup/freezer",
                                      "/sys/fs/cgroup/net_cls", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"])
    }

    @Test func pureV2Host() throws {
        let found = try CgroupLayout.detect(mountinfo: "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate")
        #expect(found.kind == .v2)
        #expect(found.v1.isEmpty && found.unified == "/sys/fs/cgroup")
        #expect(found.directories(named: "godwit-lab-h1").directories == ["/sys/fs/cgroup/godwit-lab-h1"])
    }

    @Test func thisHostHasCgroups() {
        #expect(CgroupLayout.lab().kind != .none)
    }

    @Test func mountinfoEscapes() {
        #expect(MountInfo.unescape("/mnt/a\\040b") == "/mnt/a b")
        #expect(MountInfo.unescape("/plain") == "/plain")
        #expect(MountInfo.unescape("/end\\04") == "/end\\04")
    }
}
