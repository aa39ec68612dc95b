"""ModelsApi: GET /models, which the CLI's ``limner models`` lists."""

from __future__ import annotations

import httpx2

from limner.client._async_client import AsyncApiClient
from limner.client._base import Call, parse_body
from limner.client._client import ApiClient
from limner.types import ModelList


def _parse(response: httpx2.Response) -> ModelList:
    return parse_body(ModelList, response, "a model list")


class ModelsApi:
    def __init__(self, api_client: ApiClient | None = None) -> None:
        self.api_client = api_client or ApiClient()

    def list_models(self) -> ModelList:
        response, _ = self.api_client.send(Call("GET", "/models"))
        return _parse(response)


class AsyncModelsApi:
    def __init__(self, api_client: AsyncApiClient | None = None) -> None:
        self.api_client = api_client or AsyncApiClient()

    async def list_models(self) -> ModelList:
        response, _ = await self.api_client.send(Call("GET", "/models"))
        return _parse(response)
