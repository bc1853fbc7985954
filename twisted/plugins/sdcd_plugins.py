"""twistd entry points for sdcd; nothing but ServiceMakers lives here."""

from twisted.application.service import ServiceMaker

sdcd = ServiceMaker(
    "sdcd",
    "sdcd.tap",
    "Docker Remote API for a datacenter of compute nodes (SDC Docker)",
    "sdcd",
)

sdcd_agent = ServiceMaker(
    "sdcd-agent",
    "sdcd.agent.tap",
    "A compute node of an sdcd datacenter: runs containers, serves them to sdcd",
    "sdcd-agent",
)
