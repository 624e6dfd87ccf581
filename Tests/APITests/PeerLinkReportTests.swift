import API
import Testing

struct PeerLinkReportTests {
    func network(_ mode: String, _ address: String?, _ containers: String?) -> NetworkInfo {
        NetworkInfo(name: "gwbr0", mode: mode, address: address, containers: containers, gateway: nil, uplink: nil,
                    state: "up", mac: nil, leases: 0)
    }

    @Test func addressesMoveOnlyBetweenBridgesOnOneSegment() {
        let h1 = network("bridged", "192.168.1.11/24", "192.168.1.64/27")
        let same = PeerLinkReport.portability(local: h1, peer: network("bridged", "192.168.1.12/24", "192.168.1.96/27"), remote: "h2")
        #expect(same.0 && same.2.isEmpty)
        let overlapping = PeerLinkReport.portability(local: h1, peer: network("bridged", "192.168.1.12/24", "192.168.1.64/26"), remote: "h2")
        #expect(overlapping.0 && overlapping.2.count == 1)
        let routed = PeerLinkReport.portability(local: h1, peer: network("bridged", "192.168.2.12/24", "192.168.2.96/27"), remote: "h2")
        #expect(!routed.0 && routed.1.contains("192.168.2.0/24"))
        let nat = PeerLinkReport.portability(local: h1, peer: network("nat", "10.99.1.1/24", nil), remote: "h2")
        #expect(!nat.0 && nat.1.contains("NAT"))
        #expect(!PeerLinkReport.portability(local: nil, peer: h1, remote: "h2").0)
        #expect(!PeerLinkReport.portability(local: network("unmanaged", nil, "10.0.0.0/24"), peer: h1, remote: "h2").0)
    }
}
