// The function catalogue (GET /functions): what a step may call, with schemas.
import { useQuery } from "@tanstack/react-query";
import { api, unwrap } from "../api/client";

export function useFunctions() {
  return useQuery({
    queryKey: ["functions"],
    queryFn: async () => unwrap(await api.GET("/functions")),
    staleTime: 30_000,
  });
}
