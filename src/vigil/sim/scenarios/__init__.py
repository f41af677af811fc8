"""The explicit registries of attack scenarios and benign look-alikes, by stable name."""

from __future__ import annotations

from vigil.sim.scenarios.base import Episode, Scenario, World
from vigil.sim.scenarios.chain import (
    AddressPoisoning,
    DrainerApproval,
    HotWalletDrain,
    MixerLaundering,
    SanctionedExposure,
)
from vigil.sim.scenarios.identity import AccountTakeover, ApiKeyAbuse, CredentialStuffing, LoyaltyTheft
from vigil.sim.scenarios.lookalikes import (
    ColdStorageSweep,
    DefiApproval,
    EmployeeReport,
    ForgotPassword,
    LargeKnownWithdrawal,
    MarketMaker,
    NewAddressTestFirst,
    NewPhone,
    Traveller,
    VendorBulkSync,
)
from vigil.sim.scenarios.market import PumpAndDump, Spoofing, WashTrading
from vigil.sim.scenarios.payments import CardTesting, MoneyMule, Structuring
from vigil.sim.scenarios.saas import InsiderExport, SupplyChainCompromise

#: Attack scenarios by name.  Adding one means adding it here.
SCENARIOS: dict[str, type[Scenario]] = {
    cls.name: cls
    for cls in (
        AccountTakeover,
        SupplyChainCompromise,
        InsiderExport,
        CredentialStuffing,
        ApiKeyAbuse,
        AddressPoisoning,
        SanctionedExposure,
        DrainerApproval,
        MixerLaundering,
        Structuring,
        MoneyMule,
        WashTrading,
        Spoofing,
        PumpAndDump,
        HotWalletDrain,
        CardTesting,
        LoyaltyTheft,
    )
}

#: Benign look-alikes by name (``benign:<name>``).
LOOKALIKES: dict[str, type[Scenario]] = {
    cls.name: cls
    for cls in (
        Traveller,
        NewPhone,
        LargeKnownWithdrawal,
        MarketMaker,
        EmployeeReport,
        DefiApproval,
        VendorBulkSync,
        ColdStorageSweep,
        NewAddressTestFirst,
        ForgotPassword,
    )
}

__all__ = ["LOOKALIKES", "SCENARIOS", "Episode", "Scenario", "World"]
