import Foundation
import GodwitCore
import Testing

struct YAMLTests {
    @Test func readsAnLXDStylePreseed() throws {
        let text = """
            # godwit init --preseed
            ---
            state_dir: /var/lib/godwit
            https: "10.0.0.11:8443"
            networks:
            - name: gwbr0
              mode: bridged   # onto the uplink
              uplink: eth0
              ipv4.address: 10.99.0.11/16
              subnet: 10.99.11.0/24
            remotes: []
            tags: [a, b c, d-e]
            empty:
            """
        let value = try YAML.parse(text)
        #expect(value["state_dir"]?.string == "/var/lib/godwit")
        #expect(value["https"]?.string == "10.0.0.11:8443")
        guard case .sequence(let networks)? = value["networks"] else { Issue.record("no networks"); return }
        #expect(networks.count == 1)
        #expect(networks[0]["mode"]?.string == "bridged")
        #expect(networks[0]["ipv4.address"]?.string == "10.99.0.11/16")
        #expect(value["remotes"] == .sequence([]))
        #expect(value["tags"] == .sequence([.scalar("a"), .scalar("b c"), .scalar("d-e")]))
        #expect(value["empty"] == .null)
    }

    @Test func emittedTextReadsBackTheSame() throws {
        let value: YAMLValue = .mapping([
            ("name", .scalar("h1")),
            ("odd", .scalar("a: b # c\n\"q\" \\")),
            ("controls", .scalar("nul\u{0} esc\u{1B} nbsp\u{A0}")),
            ("mark", .scalar("\u{6E2}\"x")),
            ("dash", .scalar("-x")),
            ("list", .sequence([.scalar("1"), .mapping([("k", .scalar("v")), ("n", .sequence([.scalar("x")]))])])),
            ("none", .null),
            ("nested", .mapping([("deep", .mapping([("er", .scalar("yes"))]))])),
        ])
        #expect(try YAML.parse(YAML.emit(value)) == value)
    }

    @Test func refusesWhatItDoesNotUnderstandWithTheLine() {
        for (text, line) in [("a: 1\n  b: 2", 2), ("a:\n\t- x", 2), ("a: 1\na: 2", 2), ("a: |\n  x", 1), ("a: \"open", 1),
                             ("x: &anchor 1", 1), ("a: {b: 1}", 1), ("- a\nb: 1", 2), ("a: ['x, y']", 1), ("a: 'it's'", 1),
                             ("a: \u{7}bell", 1)] {
            #expect(throws: GodwitError.self, "\(text)") { try YAML.parse(text) }
            do { _ = try YAML.parse(text) } catch {
                #expect("\(error)".contains("line \(line)"), "\(text): \(error)")
            }
        }
    }

    @Test func boundsDepthAndSize() {
        var deep = ""
        for level in 0..<100 { deep += String(repeating: " ", count: level * 2) + "k\(level):\n" }
        #expect(throws: GodwitError.self) { try YAML.parse(deep) }
        #expect(throws: GodwitError.self) { try YAML.parse(String(repeating: "a", count: YAML.maxBytes + 1)) }
    }

    /// Random edits of a valid file: an error or a value, never a crash.
    @Test func randomTextNeverTraps() {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("ab: -#\"'[]{},\n  \t|>&*~!.")
        for _ in 0..<5000 {
            let count = Int.random(in: 0..<80, using: &generator)
            let text = String((0..<count).map { _ in alphabet.randomElement(using: &generator)! })
            _ = try? YAML.parse(text)
        }
    }
}
