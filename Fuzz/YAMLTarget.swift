import Foundation
import GodwitCore

// Target yaml: configuration files and `godwit init --preseed` input (GodwitCore's YAML
// subset). Whatever parses must emit text that parses back to the same value.
//
// Input: UTF-8 text.

func fuzzOne(_ bytes: [UInt8]) {
    let text = String(decoding: bytes, as: UTF8.self)
    guard let value = try? YAML.parse(text) else { return }
    let emitted = YAML.emit(value)
    let again = try? YAML.parse(emitted)
    fuzzCheck(again == value, "round trip changed \(value) into \(String(describing: again)) via \(emitted)")
}

func fuzzSeeds() -> [String: [UInt8]] {
    let seeds = ["state_dir: /var/lib/godwit\nnetworks:\n- name: gwbr0\n  mode: nat\n  ipv4.address: 10.99.1.1/24\n",
                 "a: [x, 'y z', \"q\\\"\"]\nb:\n  c: ~\n  d: {}\n", "- - a\n  - b\n- c: d\n  e: f\n"]
    return Dictionary(uniqueKeysWithValues: seeds.enumerated().map { ("\($0.offset)", Array($0.element.utf8)) })
}
