"""HTTP routes. Each module owns its APIRouter; service.main includes them."""
