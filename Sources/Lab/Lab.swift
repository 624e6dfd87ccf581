// Lab module
import GodwitCore
