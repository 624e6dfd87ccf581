import API
import Foundation
import GodwitCore

/// The project's one Debian image recipe (systemd, nginx, PostgreSQL...), built with
/// mmdebstrap at most once per machine: godwitd caches the tarball host-wide
/// (/var/cache/godwit/images, or GODWIT_IMAGE_CACHE), so every test and lab host that asks
/// for it after the first build only unpacks it. Use `DebianImage.ensure` rather than
/// building another recipe: each recipe costs a download and a few minutes.
enum DebianImage {
    static let alias = "debian"
    static let release = "bookworm"
    static let packages = ["nginx-light", "postgresql", "dbus", "iproute2", "procps", "curl"]

    static var buildArguments: [String] {
        ["image", "build", "debian", "--release", release, "--include", packages.joined(separator: ","), "--alias", alias]
    }

    /// The `debian` image on the daemon at `dir` (state directory, or a lab host's), built
    /// or taken from the cache; returns it as `image list` shows it.
    @discardableResult
    static func ensure(dir: String) throws -> ImageInfo {
        if let image = try find(dir: dir) { return image }
        let result = try godwit(buildArguments, dir: dir)
        guard result.succeeded else {
            throw GodwitError("`godwit \(buildArguments.joined(separator: " "))` failed: \(result.stderr)")
        }
        guard let image = try find(dir: dir) else { throw GodwitError("the debian image is missing after its build") }
        return image
    }

    static func find(dir: String) throws -> ImageInfo? {
        let json = try godwit(["image", "list", "--format", "json"], dir: dir)
        guard json.succeeded else { throw GodwitError("`godwit image list` failed: \(json.stderr)") }
        return try APICoding.decoder().decode([ImageInfo].self, from: Data(json.stdout.utf8)).first { $0.alias == alias }
    }
}
