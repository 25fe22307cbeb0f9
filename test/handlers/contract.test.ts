import { memoryLayer } from "../support/memory.ts"
import { sqlLayer } from "../support/sql.ts"
import { handlerContract } from "./contract.ts"

// One contract (SPEC 4), run on each store.
handlerContract("handlers on the memory stores", memoryLayer)
handlerContract("handlers on the PostgreSQL stores", sqlLayer("handlers"))
