// Checkpoint module
import GodwitCore
