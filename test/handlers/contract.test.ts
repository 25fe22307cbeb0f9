import { handlerContract } from "./contract/handlers.contract.ts"
import { memoryLayer } from "./support/memory.ts"

handlerContract("handlers on the memory stores", memoryLayer)
