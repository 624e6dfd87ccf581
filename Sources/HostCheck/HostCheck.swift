// HostCheck module
import GodwitCore
