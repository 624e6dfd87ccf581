import Foundation
import Testing
@testable import Checkpoint

@Suite struct ListenQueueDrainTests {
    @Test func hostEndsAreThePeersOfTheContainersVeths() {
        let container = """
        1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
        2: eth0@if4: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 02:f1:1e:72:48:19 brd ff:ff:ff:ff:ff:ff link-netns godwit-lab-h2
        """
        let host = """
        1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
        3: br0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 02:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff
        4: gw31840c1a6d97@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master br0 state UP mode DEFAULT group default qlen 1000\\    link/ether fa:6f:a7:81:49:37 brd ff:ff:ff:ff:ff:ff link-netnsid 1
        5: gw0000aaaabbbb@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master br0 state UP mode DEFAULT group default qlen 1000\\    link/ether fa:6f:a7:81:49:38 brd ff:ff:ff:ff:ff:ff link-netnsid 2
        """
        // Index 5 names a peer with index 2 too, but another container's: both ends must match.
        #expect(ListenQueueDrain.hostEnds(containerLinks: container, hostLinks: host) == ["gw31840c1a6d97"])
        #expect(ListenQueueDrain.hostEnds(containerLinks: "", hostLinks: host).isEmpty)
        // Every link is listed (the doomed copy's silencer takes all but lo down); only a
        // veth with its peer elsewhere has a peer index.
        let links = LinkListing.parse(container)
        #expect(links.map(\.name) == ["lo", "eth0"] && links.map(\.peer) == [nil, 4])
        #expect(LinkListing.parse(host).map(\.name) == ["lo", "br0", "gw31840c1a6d97", "gw0000aaaabbbb"])
    }

    @Test func pendingCountsQueuedAndHalfOpenConnections() {
        let ss = """
        LISTEN   3      9             *:80            *:*
        LISTEN   0      128     0.0.0.0:5000    0.0.0.0:*
        SYN-RECV 0      0     10.77.1.1:80    10.77.0.2:40112
        SYN-RECV 0      0     10.77.1.1:80    10.77.0.2:40114
        """
        #expect(ListenQueueDrain.pendingConnections(ss: ss) == 5)
        #expect(ListenQueueDrain.pendingConnections(ss: "LISTEN 0 9 *:80 *:*\n") == 0)
        #expect(ListenQueueDrain.pendingConnections(ss: "") == 0)
    }

    @Test func theFilterDropsOnlyNewConnectionsIntoTheContainerAndExpires() {
        let rules = ListenQueueDrain.rules(table: "godwit-drain-gw1", interface: "gw1")
        #expect(rules.hasPrefix("add table netdev godwit-drain-gw1\ndelete table netdev godwit-drain-gw1\n"))
        #expect(rules.contains("hook egress device \"gw1\""))
        #expect(rules.contains("tcp flags & (syn | ack) == syn drop"))
        #expect(rules.contains("elements = { \"gw1\" timeout \(ListenQueueDrain.expirySeconds)s }"))
    }
}
