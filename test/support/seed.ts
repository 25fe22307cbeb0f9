/**
 * The JSON examples of `seed/eventos-consumidos.md`, each with the envelope added where the
 * seed abbreviates it (SPEC 2).
 */
const envelope = (event: string) => ({
  event,
  version: "1.0",
  timestamp: "2025-11-23T15:00:00Z",
  organization_id: "org_123"
})

export const seedExamples = {
  "catalog.variant.created": {
    event: "catalog.variant.created",
    version: "1.0",
    timestamp: "2025-11-23T15:00:00Z",
    organization_id: "org_123",
    data: {
      variant_id: "var_789",
      product_id: "prod_456",
      sku: "PROD-001-RED-M",
      track_inventory: true,
      default_min_stock: 20,
      default_max_stock: 200
    }
  },
  "catalog.variant.updated": {
    ...envelope("catalog.variant.updated"),
    data: {
      variant_id: "var_789",
      changes: {
        sku: { old: "PROD-001-RED-M", new: "PROD-001-ROJO-M" },
        track_inventory: { old: false, new: true }
      }
    }
  },
  "catalog.variant.deleted": {
    ...envelope("catalog.variant.deleted"),
    data: { variant_id: "var_789", product_id: "prod_456", deletion_type: "soft", deleted_by: "user_123" }
  },
  "catalog.product.deleted": {
    ...envelope("catalog.product.deleted"),
    data: { product_id: "prod_456", variant_ids: ["var_789", "var_790", "var_791"], deleted_by: "user_123" }
  },
  "order.placed": {
    event: "order.placed",
    version: "1.0",
    timestamp: "2025-11-23T15:00:00Z",
    organization_id: "org_123",
    data: {
      order_id: "order_456",
      customer_id: "cust_789",
      local_id: "local_101",
      items: [{ variant_id: "var_789", quantity: 2, preferred_warehouse_id: "wh_101" }],
      reservation_ttl_minutes: 15
    }
  },
  "order.confirmed": {
    ...envelope("order.confirmed"),
    data: { order_id: "order_456", reservation_id: "res_123", payment_confirmed: true }
  },
  "order.cancelled": {
    ...envelope("order.cancelled"),
    data: { order_id: "order_456", reservation_id: "res_123", cancellation_reason: "customer_request", cancelled_by: "user_789" }
  },
  "order.shipped": {
    ...envelope("order.shipped"),
    data: {
      order_id: "order_456",
      reservation_id: "res_123",
      shipment_id: "ship_789",
      shipped_items: [{ variant_id: "var_789", quantity: 2, warehouse_id: "wh_101" }]
    }
  },
  "return.received": {
    event: "return.received",
    version: "1.0",
    timestamp: "2025-11-28T14:00:00Z",
    organization_id: "org_123",
    data: {
      order_id: "order_456",
      return_id: "ret_123",
      rma_number: "RMA-2025-0001",
      warehouse_id: "wh_101",
      returned_items: [{ variant_id: "var_789", quantity: 1, condition: "good", return_reason: "wrong_size" }],
      received_at: "2025-11-28T14:00:00Z"
    }
  }
} as const

export type SeedEventType = keyof typeof seedExamples
