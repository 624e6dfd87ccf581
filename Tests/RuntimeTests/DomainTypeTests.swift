import Foundation
import GodwitCore
import Testing
@testable import Runtime

@Suite struct DomainTypeTests {
    @Test func derivedNamesAreStableAndValid() throws {
        let mac = MACAddress.derived(from: "web")
        #expect(mac == MACAddress.derived(from: "web"))
        #expect(mac != MACAddress.derived(from: "web2"))
        #expect(mac.bytes[0] == 0x02)  // locally administered, unicast
        #expect(try MACAddress(mac.description) == mac)
        let veth = Veth(containerName: "a-very-long-container-name-indeed")
        #expect(veth.hostName.count <= 15)
        #expect(veth.hostName == Veth(containerName: "a-very-long-container-name-indeed").hostName)
        #expect(Veth(containerName: "x", mac: mac).mac == mac)
    }

    @Test func addressesParseAndRoundTrip() throws {
        let interface = try IPv4Interface("10.1.2.3/24")
        #expect(interface.prefixLength == 24)
        #expect(interface.address.description == "10.1.2.3")
        let json = try JSONEncoder().encode(interface)
        #expect(try JSONDecoder().decode(IPv4Interface.self, from: json) == interface)
        #expect(throws: (any Error).self) { try IPv4Interface("10.1.2.3") }
        #expect(throws: (any Error).self) { try IPv4Interface("10.1.2.300/24") }
        #expect(throws: (any Error).self) { try MACAddress("02:00:00:00:00") }
    }

    @Test func namesAreValidated() throws {
        #expect(throws: (any Error).self) { try ContainerSpec.validate(name: "../etc") }
        #expect(throws: (any Error).self) { try ContainerSpec.validate(name: "") }
        #expect(throws: (any Error).self) { try ContainerSpec(name: "ok", image: "/i", initCommand: []) }
        // The API's rule (ContainerName): what the CLI and the daemon accept, no more.
        #expect(throws: (any Error).self) { try ContainerSpec.validate(name: "web_1") }
        #expect(throws: (any Error).self) { try ContainerSpec(name: "web.1", image: "/i", initCommand: ["/sbin/init"]) }
        try ContainerSpec.validate(name: "web-1")
    }

    @Test func hybridLayoutFromMountinfo() throws {
        let mountinfo = """
            31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
            32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
            37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
            39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
            40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
            """
        let layout = try CgroupLayout.detect(mountinfo: mountinfo)
        #expect(layout.unified == "/sys/fs/cgroup/unified")
        #expect(layout.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct")
        // Named hierarchies count: a container must leave the host's root cgroup in each.
        #expect(layout.v1["name=systemd"] == "/sys/fs/cgroup/systemd")
        let cgroup = Cgroup(path: "/godwit-LAB-h1/web/", layout: layout)
        #expect(cgroup.path == "godwit-LAB-h1/web")
        #expect(cgroup.directories == [
            "/sys/fs/cgroup/cpu,cpuacct/godwit-LAB-h1/web", "/sys/fs/cgroup/freezer/godwit-LAB-h1/web",
            "/sys/fs/cgroup/memory/godwit-LAB-h1/web", "/sys/fs/cgroup/pids/godwit-LAB-h1/web",
            "/sys/fs/cgroup/systemd/godwit-LAB-h1/web", "/sys/fs/cgroup/unified/godwit-LAB-h1/web",
        ])
        #expect(cgroup.directory(for: "memory") == "/sys/fs/cgroup/memory/godwit-LAB-h1/web")
    }

    @Test func pureV2LayoutFromMountinfo() throws {
        let layout = try CgroupLayout.detect(mountinfo: "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n")
        #expect(layout.v1.isEmpty)
        let cgroup = Cgroup(path: "godwit/web", layout: layout)
        #expect(cgroup.directories == ["/sys/fs/cgroup/godwit/web"])
        #expect(cgroup.directory(for: "memory") == "/sys/fs/cgroup/godwit/web")
    }

    @Test func processIdentityRecognisesItself() throws {
        let me = try #require(ProcessIdentity.of(getpid()))
        #expect(me.isAlive)
        #expect(!ProcessIdentity(pid: getpid(), startTime: me.startTime + 1).isAlive)
        #expect(ProcessIdentity.of(-1) == nil)
    }
}
