import GodwitCore
