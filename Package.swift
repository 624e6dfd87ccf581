// swift-tools-version: 6.0
import PackageDescription

// Module map (one concern each; see README "Architecture"):
//   CGodwit      C shim: syscalls and kernel structs Swift can't reach (uffd, PAGEMAP_SCAN, ptrace, pidfd)
//   GodwitCore   errors with context, subprocess runner, paths, JSON output
//   API          what CLI and daemons exchange: container config keys, names, requests
//   Daemon       godwitd's library: state store, operations, events, images, REST routes
//   Client       the CLI's side of the REST API over the daemon's unix socket
//   Checkpoint   the only module that knows CRIU (binary, flags, images, logs)
//   CZstd        Debian's libzstd: compressed page records between daemons
//   Memory       dirty tracking (uffd-wp + PAGEMAP_SCAN, soft-dirty, hashing), page reading
//   HostCheck    what this host supports, and which migration strategies follow from it
//   Lab          simulated hosts on one machine: netns, fabric bridge, tbf shaping
//   Runtime      system containers: namespaces, pivot_root, cgroups, veth
//   Migration    the one migration engine: a source half and a destination half (state machines,
//                revert lists), the transport they speak, strategies, pre-copy rounds, page store
//   Trust        host identity (certificate), trusted clients, join tokens, remotes, mutual TLS,
//                per-migration secrets: who may talk to godwitd over HTTPS
//   godwit-spawn small C helper that sets up namespaces and execs (the daemon never forks)
let package = Package(
    name: "Godwit",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "godwit", targets: ["godwit"]),
        .executable(name: "godwitd", targets: ["godwitd"]),
        .executable(name: "godwit-spawn", targets: ["godwit-spawn"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
    ],
    targets: [
        .target(name: "CGodwit"),
        .target(name: "GodwitCore"),
        .target(name: "API", dependencies: ["GodwitCore"]),
        .target(name: "Checkpoint", dependencies: ["GodwitCore", "CGodwit"]),
        .systemLibrary(name: "CXXHash", pkgConfig: "libxxhash", providers: [.apt(["libxxhash-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .target(name: "Memory", dependencies: ["CGodwit", "GodwitCore", "CXXHash"]),
        .target(name: "HostCheck", dependencies: ["GodwitCore", "Checkpoint", "Memory", "Runtime"]),
        .target(name: "Lab", dependencies: ["GodwitCore", "Memory"]),
        .target(name: "Runtime", dependencies: ["GodwitCore", "API"]),
        .target(name: "Migration", dependencies: ["CGodwit", "GodwitCore", "API", "Checkpoint", "Memory", "CZstd"]),
        .target(
            name: "Trust",
            dependencies: [
                "API", "GodwitCore",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ]),
        .target(
            name: "Daemon",
            dependencies: [
                "API", "GodwitCore", "Runtime", "Checkpoint", "HostCheck", "Trust", "Migration",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]),
        .target(
            name: "Client",
            dependencies: [
                "API", "GodwitCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]),
        .executableTarget(name: "godwit-spawn"),
        .executableTarget(
            name: "godwit",
            dependencies: [
                "GodwitCore", "API", "Client", "Checkpoint", "HostCheck", "Lab", "Runtime",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .executableTarget(
            name: "godwitd",
            dependencies: [
                "GodwitCore", "Daemon",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .testTarget(name: "GodwitCoreTests", dependencies: ["GodwitCore"]),
        .testTarget(name: "MemoryTests", dependencies: ["Memory", "CGodwit", "GodwitCore"]),
        .testTarget(name: "HostCheckTests", dependencies: ["HostCheck", "Checkpoint", "GodwitCore", "Runtime"]),
        .testTarget(name: "LabTests", dependencies: ["Lab", "GodwitCore"]),
        .testTarget(name: "RuntimeTests", dependencies: ["Runtime", "Checkpoint", "GodwitCore"]),
        .testTarget(name: "CLITests", dependencies: ["GodwitCore", "API", "Runtime"]),
        .testTarget(
            name: "DaemonTests",
            dependencies: [
                "Daemon", "API", "GodwitCore",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
            ]),
        .testTarget(name: "APITests", dependencies: ["API", "GodwitCore"]),
        .testTarget(name: "CheckpointTests", dependencies: ["Checkpoint", "GodwitCore"]),
        .testTarget(name: "WorkloadTests", dependencies: ["GodwitCore", "Lab"]),
        .testTarget(name: "MigrationTests", dependencies: ["Migration", "Memory", "Checkpoint", "Runtime", "GodwitCore", "API"]),
        .testTarget(
            name: "TrustTests",
            dependencies: [
                "Trust", "API", "GodwitCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]),
    ],
    swiftLanguageModes: [.v6]
)
