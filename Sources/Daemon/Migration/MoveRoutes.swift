import API
import Foundation
import GodwitCore
import Hummingbird

/// The unix-socket routes for moves (the CLI's side).
enum MoveRoutes {
    static func add(to router: Router<BasicRequestContext>, daemon: DaemonContext) {
        router.post("/1.0/containers/:name/move") { request, context in
            let body = try await APIRoutes.decode(MoveRequest.self, request)
            return APIRoutes.async(try daemon.migrations.move(try context.parameters.require("name"), body))
        }
        router.get("/1.0/containers/:name/moves") { _, context in
            try APIRoutes.sync(daemon.migrations.reports(of: try context.parameters.require("name")))
        }
    }
}
