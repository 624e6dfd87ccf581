import Foundation
import GodwitCore
import Testing
@testable import Daemon

@Suite struct NetworkTests {
    @Test func subnetsParseAndRejectNonsense() throws {
        let subnet = try Subnet("10.77.1.0/24")
        #expect(subnet.network.description == "10.77.1.0")
        #expect(subnet.broadcast.description == "10.77.1.255")
        #expect(subnet.contains(IPv4("10.77.1.9")!))
        #expect(!subnet.contains(IPv4("10.77.2.9")!))
        for bad in ["10.77.1.0", "10.77.1.0/33", "10.77.1.5/24", "300.1.1.0/24", "a.b.c.d/8", "10.77.1.0/31"] {
            #expect(throws: GodwitError.self, "\(bad)") { try Subnet(bad) }
        }
    }

    @Test func leasesSkipNetworkGatewayAndUsedAddresses() throws {
        let plan = try AddressPlan(bridge: "br0", subnet: Subnet("10.77.1.0/29"), gateway: IPv4("10.77.1.1"))
        #expect(try plan.nextFree(excluding: []).description == "10.77.1.2")
        #expect(try plan.nextFree(excluding: [IPv4("10.77.1.2")!]).description == "10.77.1.3")
        let used = Set((2...6).map { IPv4("10.77.1.\($0)")! })
        #expect(throws: GodwitError.self) { try plan.nextFree(excluding: used) }
        // A gateway outside the subnet (the lab's fabric) doesn't take an address.
        let wide = try AddressPlan(bridge: "br0", subnet: Subnet("10.77.1.0/24"), gateway: IPv4("10.77.0.1"))
        #expect(try wide.nextFree(excluding: []).description == "10.77.1.1")
    }

    @Test func macsAreStableLocalUnicast() {
        let mac = StableMAC.forContainer("c1")
        #expect(mac == StableMAC.forContainer("c1"))
        #expect(mac != StableMAC.forContainer("c2"))
        #expect(mac.hasPrefix("02:"))
        #expect(mac.split(separator: ":").count == 6)
        #expect(mac.range(of: "^([0-9a-f]{2}:){5}[0-9a-f]{2}$", options: .regularExpression) != nil)
    }

    @Test func processIdentityReadsStartTime() throws {
        let me = try #require(ProcessIdentity.of(getpid()))
        #expect(me.startTime > 0)
        #expect(me.isAlive)
        #expect(!ProcessIdentity(pid: getpid(), startTime: me.startTime + 1).isAlive)
        #expect(ProcessIdentity.of(999_999_999) == nil)
    }
}
