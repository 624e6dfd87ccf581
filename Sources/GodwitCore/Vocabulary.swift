/// Ways to learn which pages a running process wrote since the last look. Listed in order
/// of preference: exact and cheap first, a full read of memory every round last.
public enum DirtyTrackerKind: String, Codable, Sendable, CaseIterable {
    case uffdWP = "uffd-wp"
    case softDirty = "soft-dirty"
    case hashing
}
