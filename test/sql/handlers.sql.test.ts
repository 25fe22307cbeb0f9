import { handlerContract } from "../contract/handlers.contract.ts"
import { sqlLayer } from "./support.ts"

handlerContract("handlers on the PostgreSQL stores", sqlLayer("handlers"))
