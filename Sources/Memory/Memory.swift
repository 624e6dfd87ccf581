// Memory module
import GodwitCore
