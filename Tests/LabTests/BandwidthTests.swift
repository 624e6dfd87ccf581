import GodwitCore
import Testing
@testable import Lab

@Suite struct BandwidthTests {
    @Test(arguments: [
        ("1gbit", UInt64(1_000_000_000)), ("500mbit", 500_000_000), ("10kbit", 10_000), ("64bit", 64),
        ("1.5gbit", 1_500_000_000), ("2tbit", 2_000_000_000_000), ("1GBit", 1_000_000_000),
        ("1kibit", 1024), ("1mibit", 1_048_576), ("1gibit", 1_073_741_824),
        // tc's bps are bytes per second
        ("125mbps", 1_000_000_000), ("1kbps", 8000), ("100bps", 800), ("1MBps", 8_000_000), ("1kibps", 8192),
        (" 100mbit ", 100_000_000),
    ])
    func parsesTcUnits(text: String, bits: UInt64) throws {
        #expect(try Bandwidth(parsing: text).bitsPerSecond == bits)
    }

    @Test func unknownUnitListsTheValidOnes() {
        let error = #expect(throws: GodwitError.self) { try Bandwidth(parsing: "1gbt") }
        #expect(error?.message.contains("unknown unit 'gbt'") == true)
        #expect(error?.hint?.contains("gbit") == true)
        #expect(error?.hint?.contains("mbps") == true)
        #expect(error?.hint?.contains("bytes") == true)
    }

    @Test(arguments: ["", "gbit", "100", "1..5gbit", "-1gbit", "0mbit", "1bit", "200tbit", "1 gbit x", "fast"])
    func rejectsBadRates(text: String) {
        #expect(throws: GodwitError.self) { try Bandwidth(parsing: text) }
    }

    @Test func missingUnitSaysSo() {
        let error = #expect(throws: GodwitError.self) { try Bandwidth(parsing: "100") }
        #expect(error?.message.contains("unit is missing") == true)
    }

    @Test func describesWithTheLargestExactUnit() throws {
        #expect(Bandwidth(bitsPerSecond: 1_000_000_000).description == "1gbit")
        #expect(Bandwidth(bitsPerSecond: 1_500_000_000).description == "1500mbit")
        #expect(Bandwidth(bitsPerSecond: 1234).description == "1234bit")
        for text in ["1gbit", "250mbit", "125mbps", "1kibit", "3tbit"] {
            let rate = try Bandwidth(parsing: text)
            #expect(try Bandwidth(parsing: rate.description) == rate)
        }
    }

    @Test func handsTcAnUnambiguousRate() throws {
        #expect(try Bandwidth(parsing: "125mbps").tcRate == "1000000000bit")
    }

    @Test func burstIsAboutTwoMillisecondsButNeverTiny() throws {
        #expect(try Bandwidth(parsing: "1gbit").tbfBurstBytes == 250_000)
        #expect(try Bandwidth(parsing: "10gbit").tbfBurstBytes == 2_500_000)
        #expect(try Bandwidth(parsing: "1mbit").tbfBurstBytes == 32 * 1024)
    }

    @Test func linkRateAcceptsUnlimited() throws {
        #expect(try LinkRate(parsing: "unlimited") == .unlimited)
        #expect(try LinkRate(parsing: "Unlimited") == .unlimited)
        #expect(try LinkRate(parsing: "1gbit") == .limited(Bandwidth(bitsPerSecond: 1_000_000_000)))
        let error = #expect(throws: GodwitError.self) { try LinkRate(parsing: "1gbt") }
        #expect(error?.hint?.contains("unlimited") == true)
    }
}
