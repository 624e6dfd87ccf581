// Runtime module
import GodwitCore
